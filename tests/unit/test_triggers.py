"""history.TRIGGERS: every ADT trigger A01–A62 has a stated effect, and an event of any
trigger, alone or with others, folds without failing. Pure, no I/O."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from enrollment_svc.history import (
    IDENTITY_TRIGGERS,
    MERGE_TRIGGERS,
    TRANSITIONS,
    TRIGGERS,
    encounter_event,
    fold,
    trigger_spec,
)
from schemas.adt_event import AdtEventV1, Identifier, Location, Patient, Visit
from tests.unit.test_history import FAC, LA, VISIT

ALL = [f"A{n:02d}" for n in range(1, 63)]

# What each trigger does to a visit seen for the first time: the status of the encounter
# its event alone makes, or None when the event concerns no encounter at all.
ALONE: dict[str, str | None] = {trigger: None for trigger in ALL} | {
    "A01": "active",
    "A02": "active",
    "A03": "discharged",
    "A04": "active",
    "A05": "preadmit",
    "A06": "active",
    "A07": "active",
    "A08": "active",  # an update of a visit not seen yet: the visit exists
    "A11": "cancelled",
    "A12": "active",
    "A13": "active",
    "A38": "cancelled",
}
UNASSIGNED = {"A56", "A57", "A58", "A59"}


def adt(trigger: str, **fields: Any) -> AdtEventV1:
    base: dict[str, Any] = {
        "event_id": uuid.uuid5(uuid.NAMESPACE_OID, trigger),
        "message_id": uuid.uuid4(),
        "message_type": "ADT",
        "trigger_event": trigger,
        "hl7_version": "2.5.1",
        "processing_id": "P",
        "control_id": f"C-{trigger}",
        "sending_facility": FAC,
        "received_at": dt.datetime(2024, 7, 1, 16, 0, tzinfo=dt.UTC),
        "event_time": dt.datetime(2024, 7, 1, 15, 0, tzinfo=dt.UTC),
        "patient": Patient(patient_key="pk1", identifiers=[Identifier(value="MRN1")]),
        "visit": Visit(visit_number=VISIT, patient_class="I", location=Location(point_of_care="4W")),
    }
    return AdtEventV1(**(base | fields))


def test_the_table_has_every_trigger_from_a01_to_a62_and_nothing_else() -> None:
    assert sorted(TRIGGERS) == ALL


@pytest.mark.parametrize("trigger", ALL)
def test_each_trigger_states_its_effect_and_why(trigger: str) -> None:
    spec = TRIGGERS[trigger]
    assert spec.effect in ("transition", "update", "identity", "none")
    assert spec.meaning and spec.why
    n = int(trigger[1:])
    if trigger in UNASSIGNED:
        assert (spec.effect, spec.section, spec.meaning) == ("none", "", "not defined")
    else:  # HL7 v2.5 chapter 3 numbers A01–A55 as 3.3.1–3.3.55 and goes on with A60 at 3.3.56
        assert spec.section == f"3.3.{n if n <= 55 else n - 4}"


@pytest.mark.parametrize("trigger", ALL)
def test_an_event_of_each_trigger_alone_folds_or_concerns_no_encounter(trigger: str) -> None:
    event = encounter_event(adt(trigger), LA)
    expected = ALONE[trigger]
    if expected is None:
        assert event is None, f"{trigger} should concern no encounter"
        assert TRIGGERS[trigger].effect in ("identity", "none")
        return
    assert event is not None and TRIGGERS[trigger].effect in ("transition", "update")
    state = fold(FAC, VISIT, [event])
    assert state is not None and state.status == expected


@pytest.mark.parametrize("trigger", ALL)
def test_an_event_of_each_trigger_after_an_admission_folds(trigger: str) -> None:
    admit = encounter_event(adt("A01", event_id=uuid.uuid4(), event_time=dt.datetime(2024, 7, 1, 9, 0, tzinfo=dt.UTC)),
                            LA)
    assert admit is not None
    later = encounter_event(adt(trigger), LA)
    state = fold(FAC, VISIT, [admit] if later is None else [admit, later])
    assert state is not None and state.facility == FAC


def test_the_status_table_and_the_trigger_table_agree() -> None:
    assert {t for _, t in TRANSITIONS} == {t for t, s in TRIGGERS.items() if s.effect == "transition"}
    assert {t for t, s in TRIGGERS.items() if s.effect == "update"} == {"A08", "A12"}


def test_merges_are_identity_triggers_and_a18_is_one() -> None:
    assert MERGE_TRIGGERS <= IDENTITY_TRIGGERS
    assert "A18" in MERGE_TRIGGERS
    assert {"A28", "A31", "A40"} <= IDENTITY_TRIGGERS


@pytest.mark.parametrize("trigger", ["A00", "A63", "A99", "O01", "Z01", "", "ADT", "a14 "])
def test_unknown_and_non_adt_triggers_have_no_effect(trigger: str) -> None:
    assert trigger_spec(trigger).effect == "none"
    assert encounter_event(adt(trigger), LA) is None


def test_trigger_spec_reads_case_and_spaces_away() -> None:
    assert trigger_spec(" a03 ") is TRIGGERS["A03"]
