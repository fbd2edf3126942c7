"""`notifier.policy`: who is told what, minimum necessary under 42 CFR Part 2, bundling."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from adt_listener.normalize import patient_key
from notifier import policy
from notifier.config import NotifyConfig, RecipientConfig, config_from_text
from notifier.model import Content, Diagnosis, Encounter, Patient, PatientId, Practitioner
from schemas.adt_event import AdtEventV1, Identifier, Provider
from schemas.enrollment import CriterionV1, EncounterRef, EnrollmentCandidateV1, candidate_event_id
from tests.adt_builder import adt, event

LA = ZoneInfo("America/Los_Angeles")
NOW = dt.datetime(2026, 3, 4, 18, 0, tzinfo=dt.UTC)  # 10:00 in Los Angeles (PST)
AT = dt.datetime(2026, 3, 4, 9, 55, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
PERSON = uuid.UUID("00000000-0000-4000-8000-00000000a001")
OTHER_PERSON = uuid.UUID("00000000-0000-4000-8000-00000000a002")
CANDIDATE = uuid.UUID("00000000-0000-4000-8000-00000000c001")
ENROLLED_EVENT = uuid.UUID("00000000-0000-4000-8000-00000000e001")

CONFIG = """
version: "policy-test-1"
timezone: America/Los_Angeles
portal_url: "https://portal.example.org"
bundle_window_s: 120
encounter_events: {events}
part2:
  facilities: [DTSOBERING]
  sud_code_prefixes: [F10, F11, F12, F13, F14, F15, F16, F17, F18, F19, T40, T43.6, Z71.4, Z71.5, O99.31, O99.32]
  without_consent: {mode}
care_teams:
  - {{id: toc-metro, name: TOC Metro, programs: [TOC], facilities: [STMARY, COUNTYGEN],
     endpoints: [{{name: email, channel: email, to: [toc@example.org]}}]}}
  - {{id: toc-valley, name: TOC Valley, programs: [TOC],
     endpoints: [{{name: email, channel: email, to: [valley@example.org]}}]}}
  - {{id: isr-county, name: ISR, programs: [ISR],
     endpoints: [{{name: email, channel: email, to: [isr@example.org]}}]}}
  - {{id: sud-ens, name: SUD-ENS, programs: [SUD-ENS], part2_qualified: {sud_qualified},
     endpoints: [{{name: email, channel: email, to: [sud@example.org]}}]}}
practices:
  - {{id: eastside-clinic, name: Eastside, provider_ids: ["1234567893", "1245319599"],
     endpoints: [{{name: email, channel: email, to: [east@example.org]}}]}}
  - {{id: harbor-fqhc, name: Harbor, provider_ids: ["1679576722"], digest_at: "07:30",
     endpoints: [{{name: email, channel: email, to: [harbor@example.org]}}]}}
  - {{id: recovery-clinic, name: Recovery (a Part 2 program), provider_ids: ["1999999999"], part2_qualified: true,
     endpoints: [{{name: email, channel: email, to: [recovery@example.org]}}]}}
"""


def make_cfg(
    mode: str = "redact", events: str = "[admit, discharge, transfer]", sud_qualified: bool = True
) -> NotifyConfig:
    return config_from_text(CONFIG.format(mode=mode, events=events, sud_qualified=str(sud_qualified).lower()))


CFG = make_cfg()
OMIT = make_cfg("omit")


def recipient(cfg: NotifyConfig, rid: str) -> RecipientConfig:
    found = cfg.recipient(rid)
    assert found is not None, rid
    return found


def adt_event(trigger: str = "A01", **kwargs: Any) -> AdtEventV1:
    kwargs.setdefault("at", AT)
    kwargs.setdefault("facility", "STMARY")
    return event(adt(trigger, **kwargs), received_at=NOW)


def candidate(
    program: str = "TOC",
    facility: str | None = "STMARY",
    providers: tuple[Provider, ...] = (),
    reason: str = "3 inpatient admissions in 6 months; homelessness",
) -> EnrollmentCandidateV1:
    trigger = None
    if facility is not None:
        trigger = EncounterRef(
            encounter_id=uuid.UUID("00000000-0000-4000-8000-0000000e0c01"),
            facility=facility,
            visit_number="V0001",
            kind="inpatient",
            patient_class="I",
            admit_time=AT,
        )
    return EnrollmentCandidateV1(
        event_id=candidate_event_id(CANDIDATE),
        candidate_id=CANDIDATE,
        program=program,  # type: ignore[arg-type]
        person_id=PERSON,
        identifiers=[Identifier(value="MRN0001", assigning_authority="STMARY", type_code="MR")],
        medi_cal_id="95000000A",
        primary_care=list(providers),
        trigger=trigger,
        criteria=[CriterionV1(name="admissions_6m", met=True, evidence=["e1", "e2", "e3"])],
        reason=reason,
        rule_version="rules-7",
        decided_at=dt.datetime(2026, 3, 4, 9, 58, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
    )


# --- encounter_event_kind -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "patient_class", "kind"),
    [
        ("A01", "I", "admit"),
        ("A01", "E", "admit"),
        ("A01", "O", "admit"),
        ("A04", "E", "admit"),
        ("A04", "I", "admit"),
        ("A04", "O", None),
        ("A04", "R", None),
        ("A04", "", None),
        ("A06", "I", "admit"),
        ("A06", "", "admit"),
        ("A06", "O", None),
        ("A02", "I", "transfer"),
        ("A03", "I", "discharge"),
        ("A03", "E", "discharge"),
        ("A05", "I", None),
        ("A07", "O", None),
        ("A08", "I", None),
        ("A11", "I", None),
        ("A12", "I", None),
        ("A13", "I", None),
        ("A31", "I", None),
        ("A40", "I", None),
    ],
)
def test_encounter_event_kind(trigger: str, patient_class: str, kind: str | None) -> None:
    e = adt_event(trigger, patient_class=patient_class)
    assert e.trigger_event == trigger
    assert policy.encounter_event_kind(e) == kind


def test_encounter_event_kind_ignores_case_and_needs_a_class_for_a04() -> None:
    e = adt_event("A04", patient_class="E")
    assert policy.encounter_event_kind(e.model_copy(update={"trigger_event": "a04"})) == "admit"
    assert policy.encounter_event_kind(e.model_copy(update={"visit": None})) is None


# --- identities -----------------------------------------------------------------------------


def test_keys_of_matches_the_listener_key() -> None:
    e = adt_event("A01", facility="STMARY", mrn="MRN4711", medi_cal_id="95123456B")
    keys = policy.keys_of(e.patient.identifiers, e.patient.medi_cal_id, e.sending_facility)
    assert keys[0] == e.patient.patient_key == patient_key("STMARY", "MRN4711")
    assert keys == [patient_key("STMARY", "MRN4711"), patient_key("MEDI-CAL", "95123456B")]
    assert keys[1] == policy.medi_cal_key("95123456B")


def test_keys_of_uses_the_facility_when_the_identifier_has_no_authority() -> None:
    raw = adt("A01", facility="STMARY", mrn="MRN4711", at=AT, medi_cal_id=None)
    raw = raw.replace(b"MRN4711^^^STMARY^MR", b"MRN4711^^^^MR")
    e = event(raw, received_at=NOW)
    assert e.patient.identifiers[0].assigning_authority is None
    keys = policy.keys_of(e.patient.identifiers, e.patient.medi_cal_id, e.sending_facility)
    assert keys == [e.patient.patient_key] == [patient_key("STMARY", "MRN4711")]


def test_medi_cal_key_normalises_the_member_id() -> None:
    assert policy.medi_cal_key(" 95123456b ") == patient_key("MEDI-CAL", "95123456B")
    keys = policy.keys_of([Identifier(value="X1", assigning_authority="A")], "95123456b", "F")
    assert keys == [patient_key("A", "X1"), patient_key("MEDI-CAL", "95123456B")]


def test_keys_of_the_candidate_match_keys_of_its_hospital_messages() -> None:
    cand = candidate()
    e = adt_event("A03", facility="STMARY", mrn="MRN0001", medi_cal_id="95000000A")
    cand_keys = policy.keys_of(cand.identifiers, cand.medi_cal_id, "STMARY")
    adt_keys = policy.keys_of(e.patient.identifiers, e.patient.medi_cal_id, e.sending_facility)
    assert cand_keys == adt_keys
    assert len(adt_keys) == 2  # the MEDI-CAL repetition and the Medi-Cal key are one


# --- minimum necessary ----------------------------------------------------------------------

HF = Diagnosis("I50.23", "I10", "Acute on chronic systolic heart failure")
HOMELESS = Diagnosis("Z59.01", "I10")
OPIOID = Diagnosis("F11.20", "I10", "Opioid dependence")
OVERDOSE = Diagnosis("T40.1X1A", "I10", "Heroin poisoning")
REASON = "2 inpatient admissions with co-occurring SUD"


def screened_content(*, facility: str, sud_dx: bool, program: str | None) -> Content:
    diagnoses = (HF, OPIOID, HOMELESS, OVERDOSE) if sud_dx else (HF, HOMELESS)
    return Content(
        event="admit",
        occurred_at=NOW,
        patient=Patient(ids=(PatientId("MRN0001", "STMARY", "MR"),), medi_cal_id="95000000A", family="DOE"),
        person_id=PERSON,
        program=program,
        encounter=Encounter(facility=facility, visit_number="V1", patient_class="I", diagnoses=diagnoses),
        reason=REASON,
    )


RECIPIENTS = {
    # id: (consent scope that counts for it, part2_qualified)
    "eastside-clinic": ("pcp", False),
    "recovery-clinic": ("pcp", True),
    "toc-metro": ("care_team", False),
    "sud-ens": ("care_team", True),
}
CONSENTS = [frozenset(), frozenset({"pcp"}), frozenset({"care_team"}), frozenset({"pcp", "care_team"})]
TABLE = list(
    itertools.product(
        RECIPIENTS, CONSENTS, ["DTSOBERING", "STMARY"], [True, False], ["SUD-ENS", "TOC"], ["redact", "omit"]
    )
)


@pytest.mark.parametrize(("rid", "consent", "facility", "sud_dx", "program", "mode"), TABLE)
def test_minimum_necessary_table(
    rid: str, consent: frozenset[str], facility: str, sud_dx: bool, program: str, mode: str
) -> None:
    cfg = CFG if mode == "redact" else OMIT
    content = screened_content(facility=facility, sud_dx=sud_dx, program=program)
    out = policy.minimum_necessary(content, recipient(cfg, rid), consent, cfg)

    scope, qualified = RECIPIENTS[rid]
    may_see_sud = qualified or scope in consent
    if may_see_sud:
        assert out == policy.Screened(content)
        return
    if facility == "DTSOBERING":
        assert out == policy.Screened(None, "part2_facility_without_consent")
        return
    withheld = (("sud_diagnoses",) if sud_dx else ()) + (("program",) if program == "SUD-ENS" else ())
    if not withheld:
        assert out == policy.Screened(content)
        return
    if mode == "omit":
        assert out == policy.Screened(None, "sud_information_without_consent")
        return
    assert out.suppressed_reason is None
    assert out.content is not None
    assert out.content.withheld == withheld
    assert out.content.encounter is not None
    assert out.content.encounter.diagnoses == (HF, HOMELESS)
    assert out.content.program == (None if program == "SUD-ENS" else program)
    assert out.content.reason == (None if program == "SUD-ENS" else REASON)
    # Nothing else changes.
    assert replace(out.content, withheld=(), program=program, reason=REASON, encounter=content.encounter) == content


def test_minimum_necessary_the_wrong_scope_does_not_count() -> None:
    content = screened_content(facility="STMARY", sud_dx=True, program="SUD-ENS")
    practice = policy.minimum_necessary(content, recipient(CFG, "eastside-clinic"), frozenset({"care_team"}), CFG)
    team = policy.minimum_necessary(content, recipient(CFG, "toc-metro"), frozenset({"pcp", "research"}), CFG)
    for out in (practice, team):
        assert out.content is not None
        assert out.content.withheld == ("sud_diagnoses", "program")
        assert out.content.program is None


def test_minimum_necessary_redacts_sud_codes_written_without_dots() -> None:
    content = replace(
        screened_content(facility="STMARY", sud_dx=False, program="TOC"),
        encounter=Encounter(
            facility="STMARY",
            visit_number="V1",
            diagnoses=(Diagnosis("f1120"), Diagnosis("T43621A"), Diagnosis("Z7141"), HF),
        ),
    )
    out = policy.minimum_necessary(content, recipient(CFG, "eastside-clinic"), frozenset(), CFG)
    assert out.content is not None and out.content.encounter is not None
    assert out.content.encounter.diagnoses == (HF,)
    assert out.content.withheld == ("sud_diagnoses",)
    assert out.content.program == "TOC"


def test_minimum_necessary_without_encounter() -> None:
    content = replace(screened_content(facility="STMARY", sud_dx=False, program="SUD-ENS"), encounter=None)
    out = policy.minimum_necessary(content, recipient(CFG, "eastside-clinic"), frozenset(), CFG)
    assert out.content == replace(content, program=None, reason=None, withheld=("program",))
    omitted = policy.minimum_necessary(content, recipient(OMIT, "eastside-clinic"), frozenset(), OMIT)
    assert omitted == policy.Screened(None, "sud_information_without_consent")


def test_consent_scope() -> None:
    assert policy.consent_scope(recipient(CFG, "eastside-clinic"), CFG) == "pcp"
    assert policy.consent_scope(recipient(CFG, "recovery-clinic"), CFG) == "pcp"
    assert policy.consent_scope(recipient(CFG, "toc-metro"), CFG) == "care_team"
    assert policy.consent_scope(recipient(CFG, "sud-ens"), CFG) == "care_team"


# --- candidate notices ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "facility", "team"),
    [
        ("TOC", "STMARY", "toc-metro"),
        ("TOC", "COUNTYGEN", "toc-metro"),
        ("TOC", "HARBORMED", "toc-valley"),
        ("TOC", None, "toc-valley"),
        ("ISR", "STMARY", "isr-county"),
        ("SUD-ENS", "DTSOBERING", "sud-ens"),
    ],
)
def test_candidate_notices_go_to_the_team_of_the_trigger_facility(
    program: str, facility: str | None, team: str
) -> None:
    cand = candidate(program, facility)
    [planned] = policy.candidate_notices(cand, CFG, NOW)
    n = planned.notice
    assert planned.suppressed_reason is None
    assert n.recipient_id == team
    assert n.urgent is True
    assert n.deliver_after == NOW
    assert n.encounter_key is None
    assert n.source_event_id == cand.event_id
    assert n.notice_id == uuid.uuid5(policy.NOTICE_NAMESPACE, f"{cand.event_id}\x1f{team}")
    c = n.content
    assert c.event == "candidate"
    assert c.program == program
    assert c.reason == cand.reason
    assert c.candidate_id == CANDIDATE
    assert c.person_id == PERSON
    assert c.withheld == ()
    assert c.occurred_at == dt.datetime(2026, 3, 4, 17, 58, tzinfo=dt.UTC)
    assert c.occurred_at.tzinfo is dt.UTC
    assert c.patient == Patient(ids=(PatientId("MRN0001", "STMARY", "MR"),), medi_cal_id="95000000A")
    if facility is None:
        assert c.encounter is None
    else:
        assert c.encounter == Encounter(facility=facility, visit_number="V0001", patient_class="I", admit_time=AT)


def test_candidate_notice_shows_sud_ens_in_full_to_its_team_even_when_not_part2_qualified() -> None:
    cfg = make_cfg("omit", sud_qualified=False)
    cand = candidate("SUD-ENS", "DTSOBERING", reason="3 SUD-related ED visits in 12 months")
    [planned] = policy.candidate_notices(cand, cfg, NOW)
    assert planned.suppressed_reason is None
    assert planned.notice.recipient_id == "sud-ens"
    assert planned.notice.content.program == "SUD-ENS"
    assert planned.notice.content.reason == "3 SUD-related ED visits in 12 months"
    assert planned.notice.content.withheld == ()
    assert planned.notice.content.encounter is not None
    assert planned.notice.content.encounter.facility == "DTSOBERING"


def test_candidate_notice_pcp_from_the_message() -> None:
    providers = (Provider(id="999", source="PV1-7"), Provider(id="1234567893", family="OKAFOR", source="PD1-4"))
    [planned] = policy.candidate_notices(candidate(providers=providers), CFG, NOW)
    assert planned.notice.content.pcp == Practitioner("1234567893", "OKAFOR", None)


def test_candidate_without_a_team_gives_no_notice() -> None:
    data = CONFIG.format(mode="redact", events="[admit]", sud_qualified="true").replace(
        "- {id: toc-valley, name: TOC Valley, programs: [TOC],", "- {id: toc-valley, name: TOC Valley, programs: [ISR],"
    )
    cfg = config_from_text(data)
    assert policy.candidate_notices(candidate("TOC", "HARBORMED"), cfg, NOW) == []
    assert [p.notice.recipient_id for p in policy.candidate_notices(candidate("TOC", "STMARY"), cfg, NOW)] == [
        "toc-metro"
    ]


def test_candidate_notice_is_urgent_even_for_a_digest_recipient() -> None:
    data = CONFIG.format(mode="redact", events="[admit]", sud_qualified="true").replace(
        "facilities: [STMARY, COUNTYGEN],", 'facilities: [STMARY, COUNTYGEN], digest_at: "07:30",'
    )
    cfg = config_from_text(data)
    assert recipient(cfg, "toc-metro").digest_at == dt.time(7, 30)
    [planned] = policy.candidate_notices(candidate(), cfg, NOW)
    assert planned.notice.deliver_after == NOW


# --- enrollment notices ---------------------------------------------------------------------

ENROLLED_AT = dt.datetime(2026, 3, 5, 16, 0, tzinfo=dt.UTC)


def test_enrolled_notice() -> None:
    planned = policy.enrolled_notice(
        candidate("TOC"), ENROLLED_EVENT, ENROLLED_AT, recipient(CFG, "eastside-clinic"), frozenset(), CFG, NOW
    )
    n = planned.notice
    assert planned.suppressed_reason is None
    assert n.urgent is False
    assert n.deliver_after == NOW
    assert n.encounter_key is None
    assert n.recipient_id == "eastside-clinic"
    assert n.source_event_id == ENROLLED_EVENT
    assert n.notice_id == policy.notice_id(ENROLLED_EVENT, "eastside-clinic")
    assert n.content.event == "enrolled"
    assert n.content.occurred_at == ENROLLED_AT
    assert n.content.program == "TOC"
    assert n.content.reason is None
    assert n.content.withheld == ()
    assert n.content.candidate_id == CANDIDATE


def test_enrolled_notice_to_a_digest_practice_waits_for_the_digest() -> None:
    planned = policy.enrolled_notice(
        candidate("TOC"), ENROLLED_EVENT, ENROLLED_AT, recipient(CFG, "harbor-fqhc"), frozenset(), CFG, NOW
    )
    # NOW is 10:00 PST on 2026-03-04; the next 07:30 is the morning after.
    assert planned.notice.deliver_after == dt.datetime(2026, 3, 5, 15, 30, tzinfo=dt.UTC)


def test_enrolled_sud_ens_without_pcp_consent_redact() -> None:
    for consent in (frozenset(), frozenset({"care_team"})):
        planned = policy.enrolled_notice(
            candidate("SUD-ENS", "STMARY"),
            ENROLLED_EVENT,
            ENROLLED_AT,
            recipient(CFG, "eastside-clinic"),
            consent,
            CFG,
            NOW,
        )
        assert planned.suppressed_reason is None
        c = planned.notice.content
        assert c.program is None
        assert c.withheld == ("program",)
        assert c.reason is None
        assert c.event == "enrolled"


def test_enrolled_sud_ens_without_pcp_consent_omit() -> None:
    planned = policy.enrolled_notice(
        candidate("SUD-ENS", "STMARY"),
        ENROLLED_EVENT,
        ENROLLED_AT,
        recipient(OMIT, "eastside-clinic"),
        frozenset(),
        OMIT,
        NOW,
    )
    assert planned.suppressed_reason == "sud_information_without_consent"
    assert planned.notice.recipient_id == "eastside-clinic"


def test_enrolled_sud_ens_with_pcp_consent_is_full() -> None:
    for cfg in (CFG, OMIT):
        planned = policy.enrolled_notice(
            candidate("SUD-ENS", "DTSOBERING"),
            ENROLLED_EVENT,
            ENROLLED_AT,
            recipient(cfg, "eastside-clinic"),
            frozenset({"pcp"}),
            cfg,
            NOW,
        )
        assert planned.suppressed_reason is None
        assert planned.notice.content.program == "SUD-ENS"
        assert planned.notice.content.withheld == ()
        assert planned.notice.content.encounter is not None
        assert planned.notice.content.encounter.facility == "DTSOBERING"


def test_enrolled_triggered_at_a_part2_facility_without_consent_is_never_sent() -> None:
    planned = policy.enrolled_notice(
        candidate("TOC", "DTSOBERING"),
        ENROLLED_EVENT,
        ENROLLED_AT,
        recipient(CFG, "eastside-clinic"),
        frozenset(),
        CFG,
        NOW,
    )
    assert planned.suppressed_reason == "part2_facility_without_consent"


# --- the PCP's practice ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("providers", "roster", "expected"),
    [
        ([Provider(id="1679576722", source="PD1-4")], "eastside-clinic", "harbor-fqhc"),
        ([Provider(id="1245319599", source="ROL")], "harbor-fqhc", "eastside-clinic"),
        ([Provider(id="1679576722", source="PV1-7")], "eastside-clinic", "eastside-clinic"),
        ([Provider(id="1679576722", source="PV1-17")], None, None),
        ([Provider(id="5555555555", source="PD1-4")], "harbor-fqhc", "harbor-fqhc"),
        ([Provider(id=None, family="NOID", source="PD1-4")], "harbor-fqhc", "harbor-fqhc"),
        (
            [Provider(id="5555555555", source="PD1-4"), Provider(id="1234567893", source="ROL")],
            "harbor-fqhc",
            "eastside-clinic",
        ),
        ([], "harbor-fqhc", "harbor-fqhc"),
        ([], None, None),
        ([Provider(id="5555555555", source="PD1-4")], None, None),
        ([], "no-such-practice", None),
        ([], "toc-metro", None),  # a roster names practices; a care team is not a PCP
    ],
)
def test_pcp_practice(providers: list[Provider], roster: str | None, expected: str | None) -> None:
    found = policy.pcp_practice(providers, roster, CFG)
    assert (found.id if found is not None else None) == expected


# --- encounter notices ----------------------------------------------------------------------


def watchers(
    *pairs: tuple[str, str | None, uuid.UUID | None], cfg: NotifyConfig = CFG
) -> list[tuple[RecipientConfig, str | None, uuid.UUID | None]]:
    return [(recipient(cfg, rid), program, person) for rid, program, person in pairs]


def test_encounter_notices_one_per_recipient() -> None:
    e = adt_event("A01", dx=["I50.23"])
    planned = policy.encounter_notices(
        e,
        watchers(("toc-metro", "TOC", PERSON), ("eastside-clinic", "TOC", PERSON), ("toc-metro", None, None)),
        {PERSON: frozenset()},
        CFG,
        NOW,
    )
    assert [p.notice.recipient_id for p in planned] == ["toc-metro", "eastside-clinic"]
    first = planned[0].notice
    assert first.content.program == "TOC"  # the first watch wins
    assert first.content.person_id == PERSON
    for p in planned:
        n = p.notice
        assert p.suppressed_reason is None
        assert n.notice_id == uuid.uuid5(policy.NOTICE_NAMESPACE, f"{e.event_id}\x1f{n.recipient_id}")
        assert n.source_event_id == e.event_id
        assert n.urgent is False
        assert n.deliver_after == NOW + dt.timedelta(seconds=120)
        assert n.encounter_key == "STMARY|V0001"
        c = n.content
        assert c.event == "admit"
        assert c.occurred_at == dt.datetime(2026, 3, 4, 17, 55, tzinfo=dt.UTC)
        assert c.encounter is not None
        assert c.encounter.facility == "STMARY"
        assert c.encounter.location == "4W"
        assert c.encounter.hospital_service == "MED"
        assert c.encounter.diagnoses == (Diagnosis("I50.23", "I10"),)
        assert c.patient.family == "DOE" and c.patient.given == "ALEX"
        assert c.patient.birth_date == dt.date(1980, 1, 1)
        assert c.patient.ids == (PatientId("MRN0001", "STMARY", "MR"), PatientId("95000000A", "MEDI-CAL", "MA"))


def test_encounter_notice_ids_are_stable() -> None:
    e = adt_event("A03", control_id="CTRL-1")
    again = adt_event("A03", control_id="CTRL-1")
    assert e.event_id == again.event_id
    w = watchers(("toc-metro", "TOC", PERSON))
    one = policy.encounter_notices(e, w, {}, CFG, NOW)[0].notice
    two = policy.encounter_notices(again, w, {}, CFG, NOW + dt.timedelta(hours=3))[0].notice
    assert one.notice_id == two.notice_id == policy.notice_id(e.event_id, "toc-metro")
    other = policy.encounter_notices(e, watchers(("isr-county", "ISR", PERSON)), {}, CFG, NOW)[0].notice
    assert other.notice_id != one.notice_id


def test_encounter_notices_to_a_digest_recipient_wait_for_the_digest() -> None:
    planned = policy.encounter_notices(adt_event("A03"), watchers(("harbor-fqhc", "TOC", PERSON)), {}, CFG, NOW)
    assert planned[0].notice.deliver_after == dt.datetime(2026, 3, 5, 15, 30, tzinfo=dt.UTC)


def test_encounter_notices_just_before_a_digest_still_wait_the_bundle_window() -> None:
    now = dt.datetime(2026, 3, 5, 15, 29, tzinfo=dt.UTC)  # 07:29 PST, one minute before the digest
    planned = policy.encounter_notices(adt_event("A03"), watchers(("harbor-fqhc", "TOC", PERSON)), {}, CFG, now)
    assert planned[0].notice.deliver_after == now + dt.timedelta(seconds=120)


@pytest.mark.parametrize(
    ("trigger", "events", "expected"),
    [
        ("A03", "[admit]", None),
        ("A02", "[admit, discharge]", None),
        ("A01", "[admit]", "admit"),
        ("A03", "[discharge]", "discharge"),
        ("A08", "[admit, discharge, transfer]", None),
        ("A11", "[admit, discharge, transfer]", None),
        ("A13", "[admit, discharge, transfer]", None),
    ],
)
def test_encounter_notices_only_for_configured_kinds(trigger: str, events: str, expected: str | None) -> None:
    cfg = make_cfg(events=events)
    planned = policy.encounter_notices(
        adt_event(trigger), watchers(("toc-metro", "TOC", PERSON), cfg=cfg), {}, cfg, NOW
    )
    assert [p.notice.content.event for p in planned] == ([expected] if expected else [])


def test_encounter_notices_apply_minimum_necessary_per_recipient_and_person() -> None:
    e = adt_event("A01", dx=["F11.20", "I50.23"])
    planned = policy.encounter_notices(
        e,
        watchers(
            ("sud-ens", "SUD-ENS", PERSON),
            ("eastside-clinic", "SUD-ENS", PERSON),
            ("harbor-fqhc", None, OTHER_PERSON),
            ("toc-metro", None, None),
        ),
        {PERSON: frozenset({"care_team"}), OTHER_PERSON: frozenset({"pcp"})},
        CFG,
        NOW,
    )
    by_id = {p.notice.recipient_id: p for p in planned}
    full = (Diagnosis("F11.20", "I10"), Diagnosis("I50.23", "I10"))
    sud = by_id["sud-ens"].notice.content
    assert (sud.program, sud.withheld, sud.encounter.diagnoses) == ("SUD-ENS", (), full)  # type: ignore[union-attr]
    east = by_id["eastside-clinic"].notice.content
    assert east.program is None
    assert east.withheld == ("sud_diagnoses", "program")
    assert east.encounter.diagnoses == (Diagnosis("I50.23", "I10"),)  # type: ignore[union-attr]
    harbor = by_id["harbor-fqhc"].notice.content  # OTHER_PERSON consented to the PCP
    assert harbor.withheld == () and harbor.encounter.diagnoses == full  # type: ignore[union-attr]
    toc = by_id["toc-metro"].notice.content  # no person: no consent
    assert toc.withheld == ("sud_diagnoses",)
    assert all(p.suppressed_reason is None for p in planned)


def test_encounter_at_a_part2_facility_is_suppressed_without_consent() -> None:
    e = adt_event("A01", facility="DTSOBERING", dx=["I50.23"])
    planned = policy.encounter_notices(
        e,
        watchers(("eastside-clinic", "TOC", PERSON), ("sud-ens", "SUD-ENS", PERSON), ("toc-metro", "TOC", PERSON)),
        {PERSON: frozenset({"care_team"})},
        CFG,
        NOW,
    )
    assert [(p.notice.recipient_id, p.suppressed_reason) for p in planned] == [
        ("eastside-clinic", "part2_facility_without_consent"),
        ("sud-ens", None),
        ("toc-metro", None),
    ]


def test_naive_hl7_times_are_local_to_the_site() -> None:
    e = adt_event("A01")
    naive = e.model_copy(update={"event_time": dt.datetime(2026, 7, 1, 8, 0)})  # PDT in July
    [planned] = policy.encounter_notices(naive, watchers(("toc-metro", "TOC", PERSON)), {}, CFG, NOW)
    assert planned.notice.content.occurred_at == dt.datetime(2026, 7, 1, 15, 0, tzinfo=dt.UTC)


# --- next digest ----------------------------------------------------------------------------


def local(year: int, month: int, day: int, hour: int, minute: int, second: int = 0, *, fold: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=LA, fold=fold)


@pytest.mark.parametrize(
    ("at", "now", "expected"),
    [
        # around midnight
        (dt.time(7, 30), local(2026, 3, 4, 23, 59), local(2026, 3, 5, 7, 30)),
        (dt.time(7, 30), local(2026, 3, 5, 0, 1), local(2026, 3, 5, 7, 30)),
        (dt.time(7, 30), local(2026, 3, 5, 7, 30), local(2026, 3, 6, 7, 30)),  # exactly now: the next one
        (dt.time(7, 30), local(2026, 3, 5, 7, 29, 59), local(2026, 3, 5, 7, 30)),
        (dt.time(0, 0), local(2026, 3, 4, 23, 59, 59), local(2026, 3, 5, 0, 0)),
        (dt.time(0, 0), local(2026, 3, 5, 0, 0), local(2026, 3, 6, 0, 0)),
        (dt.time(23, 59), local(2026, 12, 31, 23, 59, 30), local(2027, 1, 1, 23, 59)),
        # spring forward (2026-03-08 02:00 PST -> 03:00 PDT)
        (dt.time(7, 30), local(2026, 3, 7, 20, 0), local(2026, 3, 8, 7, 30)),
        (dt.time(1, 30), local(2026, 3, 8, 1, 0), local(2026, 3, 8, 1, 30)),
        (dt.time(3, 30), local(2026, 3, 8, 1, 59), local(2026, 3, 8, 3, 30)),
        # fall back (2026-11-01 02:00 PDT -> 01:00 PST)
        (dt.time(7, 30), local(2026, 10, 31, 20, 0), local(2026, 11, 1, 7, 30)),
        (dt.time(1, 30), local(2026, 11, 1, 0, 30), local(2026, 11, 1, 1, 30)),  # the first 01:30 (PDT)
        (dt.time(1, 30), local(2026, 11, 1, 1, 45, fold=1), local(2026, 11, 2, 1, 30)),
    ],
)
def test_next_digest(at: dt.time, now: dt.datetime, expected: dt.datetime) -> None:
    got = policy.next_digest(at, now.astimezone(dt.UTC), CFG)
    assert got.tzinfo is dt.UTC
    # In UTC: a wall time that the fall-back makes ambiguous never equals a time of another zone (PEP 495).
    assert got == expected.astimezone(dt.UTC)


def test_next_digest_exact_utc_values_across_dst() -> None:
    assert policy.next_digest(dt.time(7, 30), local(2026, 3, 7, 20, 0), CFG) == dt.datetime(
        2026, 3, 8, 14, 30, tzinfo=dt.UTC
    )  # PDT: UTC-7
    assert policy.next_digest(dt.time(7, 30), local(2026, 10, 31, 20, 0), CFG) == dt.datetime(
        2026, 11, 1, 15, 30, tzinfo=dt.UTC
    )  # PST: UTC-8


def test_next_digest_in_the_repeated_hour_is_never_in_the_past() -> None:
    # 01:15 PST (the second 01:15 of 2026-11-01) comes after the first 01:30 (PDT, 08:30 UTC):
    # that digest is over, the next one is tomorrow's.
    now = dt.datetime(2026, 11, 1, 9, 15, tzinfo=dt.UTC)
    got = policy.next_digest(dt.time(1, 30), now, CFG)
    assert got > now
    assert got == dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize("at", [dt.time(0, 0), dt.time(1, 30), dt.time(2, 30), dt.time(7, 30), dt.time(23, 59)])
@pytest.mark.parametrize("day", [dt.date(2026, 3, 7), dt.date(2026, 10, 31)])
def test_next_digest_is_always_ahead_and_within_a_day(at: dt.time, day: dt.date) -> None:
    start = dt.datetime.combine(day, dt.time(0, 0), tzinfo=LA).astimezone(dt.UTC)
    for step in range(0, 3 * 24 * 60, 5):  # three days around the change, every five minutes
        now = start + dt.timedelta(minutes=step)
        got = policy.next_digest(at, now, CFG)
        assert now < got <= now + dt.timedelta(hours=25), (at, now, got)
        wall = got.astimezone(LA)
        if at != dt.time(2, 30):  # 02:30 does not exist on the day clocks spring forward
            assert (wall.hour, wall.minute) == (at.hour, at.minute), (at, now, got)


# --- bundling -------------------------------------------------------------------------------

ADMIT_T = dt.datetime(2026, 3, 4, 17, 0, tzinfo=dt.UTC)
DISCH_T = dt.datetime(2026, 3, 4, 17, 1, tzinfo=dt.UTC)


def enc_content(event: str, **encounter: Any) -> Content:
    base = Encounter(facility="STMARY", visit_number="V1", patient_class="E", location="ED")
    return Content(
        event=event,  # type: ignore[arg-type]
        occurred_at=ADMIT_T if event == "admit" else DISCH_T,
        patient=Patient(ids=(PatientId("MRN0001", "STMARY", "MR"),)),
        person_id=PERSON,
        program="TOC",
        encounter=replace(base, **encounter),
    )


def test_bundle_admit_and_discharge() -> None:
    admit = replace(enc_content("admit", admit_time=ADMIT_T, diagnoses=(HF, HOMELESS)), withheld=("sud_diagnoses",))
    discharge = replace(
        enc_content(
            "discharge",
            admit_time=None,
            discharge_time=DISCH_T,
            discharge_disposition="01",
            diagnoses=(HOMELESS, Diagnosis("J44.1", "I10")),
        ),
        withheld=("program", "sud_diagnoses"),
    )
    merged = policy.bundle(admit, discharge)
    assert merged is not None
    assert merged.event == "admit_discharge"
    assert merged.occurred_at == DISCH_T
    assert merged.encounter == Encounter(
        facility="STMARY",
        visit_number="V1",
        patient_class="E",
        location="ED",
        admit_time=ADMIT_T,
        discharge_time=DISCH_T,
        discharge_disposition="01",
        diagnoses=(HF, HOMELESS, Diagnosis("J44.1", "I10")),
    )
    assert merged.withheld == ("sud_diagnoses", "program")
    assert merged.person_id == PERSON and merged.program == "TOC"


def test_bundle_keeps_the_admit_time_of_the_admission() -> None:
    earlier = ADMIT_T - dt.timedelta(minutes=5)
    merged = policy.bundle(
        enc_content("admit", admit_time=earlier), enc_content("discharge", admit_time=ADMIT_T, discharge_time=DISCH_T)
    )
    assert merged is not None and merged.encounter is not None
    assert merged.encounter.admit_time == earlier
    only_discharge_has_it = policy.bundle(
        enc_content("admit", admit_time=None), enc_content("discharge", admit_time=ADMIT_T)
    )
    assert only_discharge_has_it is not None and only_discharge_has_it.encounter is not None
    assert only_discharge_has_it.encounter.admit_time == ADMIT_T


def test_bundle_admit_discharge_and_another_discharge() -> None:
    first = policy.bundle(enc_content("admit", admit_time=ADMIT_T), enc_content("discharge", discharge_time=DISCH_T))
    assert first is not None
    later = DISCH_T + dt.timedelta(minutes=1)
    again = policy.bundle(first, enc_content("discharge", discharge_time=later))
    assert again is not None and again.encounter is not None
    assert again.event == "admit_discharge"
    assert (again.encounter.admit_time, again.encounter.discharge_time) == (ADMIT_T, later)


def test_bundle_admit_and_transfer() -> None:
    admit = enc_content("admit", admit_time=ADMIT_T, location="ED", hospital_service="EM", diagnoses=(HF,))
    transfer = enc_content("transfer", location="4W", hospital_service=None, diagnoses=(HOMELESS,))
    merged = policy.bundle(admit, transfer)
    assert merged is not None
    assert merged.event == "admit"
    assert merged.occurred_at == ADMIT_T
    assert merged.encounter == replace(admit.encounter, location="4W")  # type: ignore[type-var]
    assert merged.encounter.hospital_service == "EM"  # type: ignore[union-attr]
    with_service = policy.bundle(admit, enc_content("transfer", location="ICU", hospital_service="CCU"))
    assert with_service is not None and with_service.encounter is not None
    assert (with_service.encounter.location, with_service.encounter.hospital_service) == ("ICU", "CCU")


@pytest.mark.parametrize(
    ("pending", "new"),
    [
        ("discharge", "admit"),
        ("discharge", "discharge"),
        ("transfer", "discharge"),
        ("transfer", "transfer"),
        ("admit", "admit"),
        ("admit_discharge", "transfer"),
        ("enrolled", "discharge"),
    ],
)
def test_bundle_keeps_other_pairs_apart(pending: str, new: str) -> None:
    assert policy.bundle(enc_content(pending), enc_content(new)) is None


def test_bundle_needs_encounters() -> None:
    admit = enc_content("admit")
    discharge = enc_content("discharge")
    assert policy.bundle(replace(admit, encounter=None), discharge) is None
    assert policy.bundle(admit, replace(discharge, encounter=None)) is None
