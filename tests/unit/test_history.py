"""history: adt.events → EncounterEvent → EncounterState (fold) → EncounterFacts. Pure, no I/O."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrollment_svc.history import classify, dx_flags, encounter_event, facts, fold, to_utc
from enrollment_svc.model import EncounterEvent, EncounterState
from enrollment_svc.rules import Rules
from schemas.adt_event import AdtEventV1, Diagnosis, Identifier, Location, Patient, Visit

LA = ZoneInfo("America/Los_Angeles")
UTC = dt.UTC
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FAC = "GENHOSP"
VISIT = "V100"


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def ev(trigger: str, minute: int, event_id: str | None = None, **fields: Any) -> EncounterEvent:
    """One EncounterEvent at T0 + minute; received a second later unless told."""
    fields.setdefault("received_at", at(minute) + dt.timedelta(seconds=1))
    return EncounterEvent(event_id=event_id or f"{trigger}@{minute}", trigger=trigger, event_time=at(minute), **fields)


def run(*events: EncounterEvent) -> EncounterState:
    state = fold(FAC, VISIT, events)
    assert state is not None
    return state


def make_rules(**site: Any) -> Rules:
    return Rules.model_validate(
        {
            "version": "test-1",
            "value_sets": {
                "smi": {"include": ["F20", "F21", "F22", "F23", "F24", "F25", "F28", "F29", "F31", "F32.2", "F32.3"]},
                "sud": {"include": ["F10", "F11", "F12", "F13", "F14", "F15", "F16", "F18", "F19"],
                        "exclude": ["F10.11", "F10.21", "F11.11", "F11.21"]},
                "overdose": {"include": ["T40", "T42.4", "T43.6"]},
                "homelessness": {"include": ["Z59.0"]},
                "incarceration": {"include": ["Z65.1"]},
                "acsc": {"include": ["E10", "E11", "J44", "J45", "I50", "I10"]},
                "mental_health": {"include": ["F"]},
            },
            "programs": {"TOC": {"capacity": 300}, "ISR": {"capacity": 240}, "SUD-ENS": {"capacity": 720}},
            "site": {
                "facilities": {
                    "GENHOSP": {"kind": "general_acute", "participating": True},
                    "PSYHOSP": {"kind": "psychiatric"},
                    "SOBER1": {"kind": "sobering_center"},
                },
                "psychiatric_services": ["PSY"],
                "psychiatric_units": ["4WPSY"],
                **site,
            },
        }
    )  # fmt: skip


RULES = make_rules()


# ---------------------------------------------------------------- to_utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (dt.datetime(2024, 7, 1, 8, 0), dt.datetime(2024, 7, 1, 15, 0, tzinfo=UTC)),  # PDT, -07:00
        (dt.datetime(2024, 1, 15, 8, 0), dt.datetime(2024, 1, 15, 16, 0, tzinfo=UTC)),  # PST, -08:00
        (dt.datetime(2024, 1, 15, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
         dt.datetime(2024, 1, 15, 13, 0, tzinfo=UTC)),  # the sender's offset wins over the site zone
        (dt.datetime(2024, 1, 15, 8, 0, tzinfo=UTC), dt.datetime(2024, 1, 15, 8, 0, tzinfo=UTC)),
        (dt.datetime(2024, 11, 3, 1, 30), dt.datetime(2024, 11, 3, 8, 30, tzinfo=UTC)),  # ambiguous: first (PDT)
    ],
)  # fmt: skip
def test_to_utc(value: dt.datetime | None, expected: dt.datetime | None) -> None:
    result = to_utc(value, LA)
    assert result == expected
    if result is not None:
        assert result.utcoffset() == dt.timedelta(0)


# ---------------------------------------------------------------- encounter_event


def adt(trigger: str = "A01", visit: Visit | None = None, **fields: Any) -> AdtEventV1:
    base: dict[str, Any] = {
        "event_id": uuid.uuid5(uuid.NAMESPACE_OID, trigger + str(sorted(fields))),
        "message_id": uuid.uuid4(),
        "message_type": "ADT",
        "trigger_event": trigger,
        "hl7_version": "2.5.1",
        "processing_id": "P",
        "control_id": "C1",
        "sending_facility": FAC,
        "received_at": dt.datetime(2024, 7, 1, 16, 0, tzinfo=UTC),
        "patient": Patient(patient_key="pk1", identifiers=[Identifier(value="MRN1")]),
        "visit": visit if visit is not None else Visit(visit_number=VISIT, patient_class="I"),
    }
    base.update(fields)
    return AdtEventV1(**base)


def test_encounter_event_maps_the_visit() -> None:
    event = adt(
        "a01",
        Visit(
            visit_number=" V100 ",
            patient_class="i",
            hospital_service="PSY",
            location=Location(point_of_care="4WPSY", room="12", facility="EAST"),
            admit_time=dt.datetime(2024, 7, 1, 7, 30),
            discharge_time=dt.datetime(2024, 7, 3, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        ),
        event_time=dt.datetime(2024, 7, 1, 8, 0),
    )
    e = encounter_event(event, LA)
    assert e == EncounterEvent(
        event_id=str(event.event_id),
        trigger="A01",
        event_time=dt.datetime(2024, 7, 1, 15, 0, tzinfo=UTC),
        received_at=dt.datetime(2024, 7, 1, 16, 0, tzinfo=UTC),
        patient_class="I",
        hospital_service="PSY",
        point_of_care="4WPSY",
        location_facility="EAST",
        admit_time=dt.datetime(2024, 7, 1, 14, 30, tzinfo=UTC),
        discharge_time=dt.datetime(2024, 7, 3, 17, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize("trigger", ["A28", "A29", "A31", "A34", "A40", "A47", "A50"])
def test_person_level_triggers_concern_no_encounter(trigger: str) -> None:
    assert encounter_event(adt(trigger), LA) is None


@pytest.mark.parametrize("visit", [Visit(patient_class="E"), Visit(visit_number="  ", patient_class="E")])
def test_no_visit_number_no_encounter(visit: Visit) -> None:
    assert encounter_event(adt("A04", visit), LA) is None


def test_no_pv1_no_encounter() -> None:
    event = adt("A04").model_copy(update={"visit": None})
    assert encounter_event(event, LA) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"event_time": dt.datetime(2024, 7, 1, 1, 0), "message_time": dt.datetime(2024, 7, 1, 2, 0)},
         dt.datetime(2024, 7, 1, 8, 0, tzinfo=UTC)),
        ({"message_time": dt.datetime(2024, 7, 1, 2, 0)}, dt.datetime(2024, 7, 1, 9, 0, tzinfo=UTC)),
        ({}, dt.datetime(2024, 7, 1, 16, 0, tzinfo=UTC)),  # received_at
    ],
)  # fmt: skip
def test_event_time_falls_back_to_message_time_then_received_at(fields: dict[str, Any], expected: dt.datetime) -> None:
    e = encounter_event(adt("A04", **fields), LA)
    assert e is not None and e.event_time == expected


@pytest.mark.parametrize("system", [None, "", "I10", "i10", "I10C", "ICD10", "ICD-10", "ICD-10-CM", "ICD10CM",
                                    "icd_10_cm", "2.16.840.1.113883.6.90"])  # fmt: skip
def test_icd10_coding_systems_are_read(system: str | None) -> None:
    e = encounter_event(adt(diagnoses=[Diagnosis(code=" f10.20 ", coding_system=system)]), LA)
    assert e is not None and e.diagnoses == ("F1020",)


@pytest.mark.parametrize("system", ["I9", "I9C", "ICD9", "ICD-9-CM", "I10P", "ICD10PCS", "SNOMED-CT", "99LOCAL"])
def test_other_coding_systems_are_ignored(system: str) -> None:
    # V60.0 is ICD-9 "lack of housing"; read as ICD-10 it would be a transport accident.
    e = encounter_event(adt(diagnoses=[Diagnosis(code="V60.0", coding_system=system)]), LA)
    assert e is not None and e.diagnoses == ()


def test_diagnoses_are_canonical_deduplicated_and_icd10_shaped() -> None:
    dxs = [
        Diagnosis(code="Z59.00", coding_system="I10"),
        Diagnosis(code="z5900"),
        Diagnosis(code="F32.2", coding_system="ICD10CM"),
        Diagnosis(code="296.30"),  # ICD-9 without a coding system: not ICD-10 shaped
        Diagnosis(code="303.90", coding_system="I9C"),
        Diagnosis(code="ABC"),
    ]
    e = encounter_event(adt(diagnoses=dxs), LA)
    assert e is not None and e.diagnoses == ("F322", "Z5900")


# ---------------------------------------------------------------- fold: one trigger at a time


def test_empty_and_unhandled_inputs_fold_to_none() -> None:
    assert fold(FAC, VISIT, []) is None
    assert fold(FAC, VISIT, [ev("A09", 0), ev("A14", 1)]) is None


def test_a04_opens_an_ed_visit() -> None:
    s = run(ev("A04", 0, patient_class="E", point_of_care="ED"))
    assert (s.status, s.patient_class, s.ever_inpatient, s.start, s.end) == ("active", "E", False, at(0), None)
    assert (s.facility, s.visit_number, s.point_of_care, s.last_event_time) == (FAC, VISIT, "ED", at(0))


def test_a01_admits() -> None:
    s = run(ev("A01", 5, patient_class="I", admit_time=at(2)))
    assert (s.status, s.ever_inpatient, s.start) == ("active", True, at(2))


def test_a05_is_a_preadmit_not_an_admission() -> None:
    s = run(ev("A05", 0, patient_class="I", admit_time=at(3000)))
    assert (s.status, s.ever_inpatient, s.start) == ("preadmit", False, at(0))
    s = run(ev("A05", 0, patient_class="I", admit_time=at(3000)), ev("A01", 3100, patient_class="I"))
    assert (s.status, s.ever_inpatient, s.start) == ("active", True, at(3100))  # the planned time is no start


def test_a08_updating_a_preadmit_to_class_i_is_not_an_admission() -> None:
    s = run(ev("A05", 0, patient_class="P"), ev("A08", 10, patient_class="I"))
    assert (s.status, s.ever_inpatient) == ("preadmit", False)


def test_a06_after_a04_makes_the_ed_visit_one_admission() -> None:
    s = run(ev("A04", 0, patient_class="E", point_of_care="ED"), ev("A06", 240, point_of_care="5W"))
    assert (s.status, s.patient_class, s.ever_inpatient, s.start, s.point_of_care) == ("active", "I", True, at(0), "5W")
    assert classify(s, RULES) == "inpatient"


def test_a07_makes_an_inpatient_outpatient_but_it_was_an_admission() -> None:
    s = run(ev("A01", 0, patient_class="I"), ev("A07", 60))
    assert (s.status, s.patient_class, s.ever_inpatient) == ("active", "O", True)


def test_a02_inside_one_hospital_is_one_encounter() -> None:
    s = run(
        ev("A01", 0, patient_class="I", point_of_care="ICU", hospital_service="MED", admit_time=at(0)),
        ev("A02", 600, point_of_care="5W"),
        ev("A02", 900, point_of_care="4WPSY", hospital_service="PSY"),
    )
    assert (s.status, s.start, s.point_of_care, s.hospital_service) == ("active", at(0), "4WPSY", "PSY")
    assert classify(s, RULES) == "psych_inpatient"


def test_a12_puts_the_patient_back_where_the_cancelled_transfer_took_them_from() -> None:
    a01 = ev("A01", 0, patient_class="I", point_of_care="ICU", hospital_service="MED")
    a02 = ev("A02", 600, point_of_care="4WPSY", hospital_service="PSY", diagnoses=("F200",))
    s = run(a01, a02, ev("A12", 610))
    assert (s.point_of_care, s.hospital_service, s.diagnoses) == ("ICU", "MED", frozenset())
    # HL7 3.3.12: PV1-3 of the A12 is the location before the transfer; it wins when sent
    s = run(a01, a02, ev("A12", 610, point_of_care="ICU2"))
    assert (s.point_of_care, s.hospital_service) == ("ICU2", "MED")
    # two transfers, one cancel: back to the middle one
    s = run(a01, ev("A02", 100, point_of_care="5W"), a02, ev("A12", 610))
    assert s.point_of_care == "5W"


def test_a03_discharges_at_pv1_45_else_at_its_event_time() -> None:
    s = run(ev("A01", 0, patient_class="I"), ev("A03", 500, discharge_time=at(480)))
    assert (s.status, s.end, s.last_event_time) == ("discharged", at(480), at(500))
    s = run(ev("A01", 0, patient_class="I"), ev("A03", 500))
    assert (s.status, s.end) == ("discharged", at(500))


def test_a08_after_a03_corrects_the_discharge_time() -> None:
    s = run(ev("A01", 0), ev("A03", 500, discharge_time=at(480)), ev("A08", 600, discharge_time=at(470)))
    assert (s.status, s.end) == ("discharged", at(470))


def test_a13_after_a03_is_active_again() -> None:
    s = run(
        ev("A01", 0, patient_class="I", diagnoses=("I50",)),
        ev("A03", 500, discharge_time=at(480), diagnoses=("J449",)),
        ev("A13", 520),
    )
    assert (s.status, s.end, s.diagnoses) == ("active", None, frozenset({"I50"}))


def test_a11_after_a01_cancels_and_a_later_a01_reopens() -> None:
    a01 = ev("A01", 0, patient_class="I", admit_time=at(0), diagnoses=("F200",))
    s = run(a01, ev("A11", 30))
    assert (s.status, s.ever_inpatient, s.diagnoses, s.start, s.end) == ("cancelled", False, frozenset(), at(0), None)
    s = run(a01, ev("A11", 30), ev("A01", 60, patient_class="I", diagnoses=("F250",)))
    assert (s.status, s.ever_inpatient, s.start, s.diagnoses) == ("active", True, at(60), frozenset({"F250"}))


def test_a11_of_a_discharged_visit_and_a_cancel_as_first_event() -> None:
    s = run(ev("A04", 0, patient_class="E"), ev("A03", 100), ev("A11", 200))
    assert (s.status, s.end) == ("cancelled", None)
    s = run(ev("A11", 5))
    assert (s.status, s.start) == ("cancelled", at(5))


def test_a38_cancels_a_preadmit_only() -> None:
    assert run(ev("A05", 0), ev("A38", 10)).status == "cancelled"
    assert run(ev("A01", 0), ev("A38", 10)).status == "active"


def test_a08_alone_describes_an_existing_visit() -> None:
    s = run(ev("A08", 0, patient_class="I", admit_time=at(-60)))
    assert (s.status, s.ever_inpatient, s.start) == ("active", True, at(-60))
    assert run(ev("A08", 0, patient_class="P")).status == "preadmit"


def test_a08_updates_class_location_and_diagnoses() -> None:
    s = run(
        ev("A04", 0, patient_class="E", point_of_care="ED", diagnoses=("R079",)),
        ev("A08", 30, hospital_service="PSY", diagnoses=("F1020",)),
    )
    assert (s.patient_class, s.point_of_care, s.hospital_service) == ("E", "ED", "PSY")
    assert s.diagnoses == frozenset({"R079", "F1020"})


def test_start_is_the_earliest_admit_time_seen() -> None:
    s = run(ev("A04", 10, admit_time=at(5)), ev("A06", 100, admit_time=at(90)), ev("A08", 120, admit_time=at(3)))
    assert s.start == at(3)


# ---------------------------------------------------------------- fold: the out-of-order cases


def test_a08_before_its_a01_in_arrival_order() -> None:
    a01 = ev("A01", 0, patient_class="I", point_of_care="5W")
    a08 = ev("A08", 30, point_of_care="6W", diagnoses=("I50",))
    assert fold(FAC, VISIT, [a08, a01]) == fold(FAC, VISIT, [a01, a08])
    assert run(a08, a01).point_of_care == "6W"


def test_a08_stamped_before_its_a01() -> None:
    s = run(ev("A08", -10, diagnoses=("I50",)), ev("A01", 0, patient_class="I"))
    assert (s.status, s.start, s.ever_inpatient, s.diagnoses) == ("active", at(0), True, frozenset({"I50"}))


def test_the_same_event_twice_counts_once() -> None:
    a03 = ev("A03", 100)
    once = run(ev("A01", 0), a03)
    assert run(ev("A01", 0), a03, a03) == once
    resent = dataclasses.replace(a03, received_at=at(900))  # a retransmission, received later
    assert fold(FAC, VISIT, [resent, ev("A01", 0), a03]) == once
    assert fold(FAC, VISIT, [a03, ev("A01", 0), resent]) == once


def test_naive_times_are_refused() -> None:
    naive = EncounterEvent("x", "A01", dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        fold(FAC, VISIT, [naive])


# ---------------------------------------------------------------- fold: order independence, as a property

TRIGGERS = ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A38", "A09"]


@st.composite
def event_lists(draw: st.DrawFn) -> list[EncounterEvent]:
    n = draw(st.integers(min_value=1, max_value=12))
    out = []
    for i in range(n):
        minute = draw(st.integers(min_value=0, max_value=6))  # few values: ties in event_time happen
        out.append(
            EncounterEvent(
                event_id=f"e{i}",
                trigger=draw(st.sampled_from(TRIGGERS)),
                event_time=at(minute),
                received_at=at(minute + draw(st.integers(min_value=0, max_value=2))),
                patient_class=draw(st.sampled_from([None, "E", "I", "O", "P"])),
                hospital_service=draw(st.sampled_from([None, "MED", "PSY"])),
                point_of_care=draw(st.sampled_from([None, "ED", "5W", "4WPSY"])),
                admit_time=draw(st.sampled_from([None, at(-5), at(1)])),
                discharge_time=draw(st.sampled_from([None, at(7)])),
                diagnoses=tuple(draw(st.sets(st.sampled_from(["F200", "F1020", "I50", "Z5900"]), max_size=2))),
            )
        )
    return out


@settings(max_examples=400, deadline=None)
@given(data=st.data(), events=event_lists())
def test_any_permutation_and_duplication_folds_to_the_sorted_state(
    data: st.DataObject, events: list[EncounterEvent]
) -> None:
    in_order = sorted(events, key=lambda e: (e.event_time, e.received_at, e.event_id))
    expected = fold(FAC, VISIT, in_order)
    copies = data.draw(st.lists(st.sampled_from(events), max_size=6))
    # a copy may be a retransmission received later: the first reception is the one kept
    delays = data.draw(st.lists(st.integers(min_value=0, max_value=3), min_size=len(copies), max_size=len(copies)))
    resent = [
        dataclasses.replace(e, received_at=e.received_at + dt.timedelta(minutes=d))
        for e, d in zip(copies, delays, strict=True)
    ]
    shuffled = data.draw(st.permutations(events + resent))
    assert fold(FAC, VISIT, shuffled) == expected
    if expected is not None:
        assert expected.end is None or expected.status == "discharged"
        assert not (expected.ever_inpatient and expected.status == "cancelled")


# ---------------------------------------------------------------- classify, dx_flags, facts


def state(**fields: Any) -> EncounterState:
    base: dict[str, Any] = {
        "facility": FAC, "visit_number": VISIT, "status": "active", "patient_class": "I", "hospital_service": None,
        "point_of_care": None, "location_facility": None, "start": T0, "end": None, "ever_inpatient": True,
        "diagnoses": frozenset(), "last_event_time": T0,
    }  # fmt: skip
    base.update(fields)
    return EncounterState(**base)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"facility": "SOBER1", "patient_class": "O", "ever_inpatient": False}, "sobering"),
        ({"facility": "SOBER1"}, "sobering"),  # the registry wins over the class
        ({"facility": "PSYHOSP"}, "psych_inpatient"),
        ({"facility": "PSYHOSP", "patient_class": "E", "ever_inpatient": False}, "ed"),  # psychiatric ED visit
        ({"hospital_service": "psy"}, "psych_inpatient"),
        ({"point_of_care": "4WPSY"}, "psych_inpatient"),
        ({"point_of_care": "4WPSY", "patient_class": "E", "ever_inpatient": False}, "ed"),
        ({"location_facility": "PSYHOSP"}, "psych_inpatient"),  # PV1-3.4 names the building
        ({"location_facility": "SOBER1", "facility": "PSYHOSP"}, "sobering"),
        ({"location_facility": "UNKNOWN", "facility": "PSYHOSP"}, "psych_inpatient"),
        ({}, "inpatient"),
        ({"facility": "NOT-IN-REGISTRY"}, "inpatient"),
        ({"patient_class": "I", "ever_inpatient": False, "status": "preadmit"}, "inpatient"),
        ({"patient_class": "O", "ever_inpatient": True}, "inpatient"),  # A07 after an admission
        ({"patient_class": "E", "ever_inpatient": False}, "ed"),
        ({"patient_class": "O", "ever_inpatient": False}, "outpatient"),
        ({"patient_class": "R", "ever_inpatient": False}, "outpatient"),
        ({"patient_class": "P", "ever_inpatient": False}, "other"),
        ({"patient_class": None, "ever_inpatient": False}, "other"),
    ],
)
def test_classify(fields: dict[str, Any], kind: str) -> None:
    assert classify(state(**fields), RULES) == kind


def test_an_ed_visit_later_admitted_is_one_inpatient_admission() -> None:
    s = run(ev("A04", 0, patient_class="E"), ev("A08", 120, patient_class="I"), ev("A03", 4000))
    assert (s.status, s.ever_inpatient) == ("discharged", True)
    assert classify(s, RULES) == "inpatient"
    s = run(ev("A04", 0, patient_class="E", hospital_service="PSY"), ev("A06", 120))
    assert classify(s, RULES) == "psych_inpatient"


@pytest.mark.parametrize(
    ("codes", "flags"),
    [
        ([], set()),
        (["F2090"], {"smi", "mental_health"}),
        (["F10.20"], {"sud", "mental_health"}),
        (["F1021"], {"mental_health"}),  # alcohol dependence in remission: not an active SUD
        (["T40.1X1A", "Z59.01"], {"overdose", "homelessness"}),
        (["Z651", "I5022", "R07.9"], {"incarceration", "acsc"}),
        (["F322"], {"smi", "mental_health"}),
        (["F321"], {"mental_health"}),
    ],
)
def test_dx_flags(codes: list[str], flags: set[str]) -> None:
    assert dx_flags(codes, RULES) == frozenset(flags)


def test_facts_from_adt_events() -> None:
    def one(trigger: str, control: str, minute: int, **visit: Any) -> AdtEventV1:
        return adt(
            trigger,
            Visit(visit_number=VISIT, **visit),
            event_id=uuid.uuid5(uuid.NAMESPACE_OID, control),
            control_id=control,
            event_time=dt.datetime(2024, 7, 1, 8, minute),
            diagnoses=[Diagnosis(code="F10.20", coding_system="I10"), Diagnosis(code="305.00", coding_system="I9C")],
        )

    stream = [one("A03", "3", 50, discharge_time=dt.datetime(2024, 7, 1, 8, 45)),
              one("A04", "1", 0, patient_class="E", location=Location(point_of_care="ED")),
              one("A04", "1", 0, patient_class="E", location=Location(point_of_care="ED"))]  # fmt: skip
    events = [e for e in (encounter_event(a, LA) for a in stream) if e is not None]
    s = fold(FAC, VISIT, events)
    assert s is not None
    f = facts("enc-1", s, RULES)
    assert (f.id, f.facility, f.visit_number, f.kind, f.status) == ("enc-1", FAC, VISIT, "ed", "discharged")
    assert (f.start, f.end) == (dt.datetime(2024, 7, 1, 15, 0, tzinfo=UTC), dt.datetime(2024, 7, 1, 15, 45, tzinfo=UTC))
    assert f.dx_flags == frozenset({"sud", "mental_health"})
