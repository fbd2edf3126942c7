"""decide: a person's current triggers replayed in event order, each on the history as it stood
then, and the plan that makes the person's candidates those of the in-order feed. Pure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from typing import Any

from enrollment_svc import decide, history
from enrollment_svc.decide import PastCandidate, PersonRecord, StoredEncounter
from enrollment_svc.model import EncounterEvent
from enrollment_svc.rules import rules_from_text

RULES = rules_from_text("""
version: "unit-1"
site:
  timezone: UTC
  facilities:
    COUNTYGEN: {kind: general_acute, participating: true}
value_sets:
  smi: {include: [F20]}
  sud: {include: [F10, F11]}
  overdose: {include: [T40]}
  homelessness: {include: [Z590]}
  incarceration: {include: [Z651]}
  acsc: {include: [I10]}
  mental_health: {include: [F]}
programs:
  TOC: {capacity: 10}
  ISR: {capacity: 10}
  SUD-ENS: {capacity: 10}
""")
NOW = dt.datetime(2026, 5, 20, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
_ids = itertools.count(1)


def ev(trigger: str, at: dt.datetime, *dx: str, patient_class: str = "I", discharge: dt.datetime | None = None,
       admit: dt.datetime | None = None) -> EncounterEvent:
    return EncounterEvent(event_id=f"e{next(_ids):04d}", trigger=trigger, event_time=at, received_at=at,
                          patient_class=patient_class, admit_time=admit, discharge_time=discharge, diagnoses=dx)


def encounter(id: str, *events: EncounterEvent, loaded: bool = True) -> StoredEncounter:
    state = history.fold("COUNTYGEN", f"V-{id}", events)
    assert state is not None
    return StoredEncounter(facts=history.facts(id, state, RULES), last_event_time=state.last_event_time,
                           events=events if loaded else None)


def stay(id: str, start: dt.datetime, *dx: str, loaded: bool = False) -> StoredEncounter:
    """A past inpatient stay of two days, admitted and discharged."""
    out = start + 2 * D
    return encounter(id, ev("A01", start, *dx, admit=start), ev("A03", out, *dx, admit=start, discharge=out),
                     loaded=loaded)


def record(*encounters: StoredEncounter, candidates: tuple[PastCandidate, ...] = ()) -> PersonRecord:
    return PersonRecord(person_id="p", birth_date=dt.date(1970, 1, 1), medi_cal=True, county_resident=True,
                        encounters=encounters, flags=(), candidates=candidates)


def candidate(program: str, encounter_id: str, status: str = "pending", *, decision: dict[str, Any] | None = None,
              reason: str | None = None, trigger_at: dt.datetime | None = None) -> PastCandidate:
    body = decision or {"trigger_at": (trigger_at or NOW - 2 * H).isoformat()}
    return PastCandidate(id=f"c-{program}-{status}", program=program, status=status, status_reason=reason,
                         encounter_id=encounter_id, decision=body, rule_version=RULES.rule_version)


TODAY = NOW - 2 * H


def todays_admission(*dx: str) -> StoredEncounter:
    return encounter("cur", ev("A01", TODAY, *dx, admit=TODAY))


def test_an_encounters_triggers_are_those_each_of_its_events_made_in_order() -> None:
    cur = encounter("cur", ev("A01", TODAY, admit=TODAY), ev("A08", TODAY + H, "F10.20", admit=TODAY))
    old = stay("old", NOW - 200 * D, loaded=True)
    found = decide.current_triggers(record(old, cur), RULES, NOW)
    assert [(t.trigger.kind, t.trigger.at) for t in found] == [("admission", TODAY), ("admission", TODAY + H)]
    # The admission's trigger saw the visit as the A01 left it: no diagnosis yet.
    assert [t.trigger.encounter.dx_flags for t in found if t.trigger.encounter] == [frozenset(),
                                                                                    frozenset({"sud",
                                                                                               "mental_health"})]


def test_history_as_of_an_event_leaves_out_what_came_after_it() -> None:
    earlier = encounter("ed", ev("A04", NOW - 30 * H, patient_class="E", admit=NOW - 30 * H),
                        ev("A08", NOW - H, "F11.20", patient_class="E", admit=NOW - 30 * H))
    cur = todays_admission()
    later = encounter("later", ev("A04", NOW - dt.timedelta(minutes=30), patient_class="E"))
    person = record(earlier, cur, later)
    key = decide.order_key(cur.events[0])  # type: ignore[index]
    seen = {e.id: e for e in decide.history_as_of(person, key, RULES).encounters}
    assert set(seen) == {"ed", "cur"}  # the visit that began after today's admission did not exist yet
    assert seen["ed"].dx_flags == frozenset()  # its diagnosis came an hour ago, after the admission
    everything = {e.id: e for e in decide.history_as_of(person, (NOW, NOW, "~"), RULES).encounters}
    assert everything["ed"].dx_flags == {"sud", "mental_health"} and set(everything) == {"ed", "cur", "later"}


def test_late_history_makes_the_candidate_on_the_first_trigger_that_qualifies() -> None:
    person = record(stay("s1", NOW - 100 * D), stay("s2", NOW - 50 * D), todays_admission("F10.20"))
    plan = decide.plan(person, RULES, NOW)
    assert plan.create is not None and plan.create.program == "TOC"
    assert plan.create.trigger.at == TODAY and plan.withdraw is None and plan.revise is None
    body = plan.create.record()
    assert body["trigger"] == "admission" and body["trigger_at"] == TODAY.isoformat()
    admissions = next(c for c in body["criteria"] if c["name"].startswith("inpatient_admissions"))
    assert admissions["evidence"] == ["s1", "s2", "cur"]


def test_a_kept_candidate_gets_the_decision_the_in_order_feed_records() -> None:
    person = record(stay("s1", NOW - 100 * D), stay("s2", NOW - 50 * D), todays_admission("F10.20"))
    right = decide.plan(person, RULES, NOW).create
    assert right is not None
    same = dataclasses.replace(person, candidates=(candidate("TOC", "cur", decision=right.record()),))
    assert not decide.plan(same, RULES, NOW).changes
    stale = {**right.record(), "reason": "what was known then"}
    revised = decide.plan(dataclasses.replace(person, candidates=(candidate("TOC", "cur", decision=stale),)),
                          RULES, NOW)
    assert revised.revise == "c-TOC-pending" and revised.create is None and revised.withdraw is None


def test_a_candidate_the_in_order_feed_would_not_have_made_is_superseded() -> None:
    person = record(stay("s1", NOW - 100 * D), stay("s2", NOW - 50 * D), todays_admission("F10.20"),
                    candidates=(candidate("SUD-ENS", "cur"),))
    plan = decide.plan(person, RULES, NOW)
    assert plan.withdraw == "c-SUD-ENS-pending"
    assert plan.create is not None and plan.create.program == "TOC"
    # Without the qualifying history nothing is proposed: the candidate goes, none comes.
    alone = dataclasses.replace(person, encounters=(todays_admission(),))
    assert decide.plan(alone, RULES, NOW) == decide.Plan(withdraw="c-SUD-ENS-pending")


def test_what_people_acted_on_binds_the_replay() -> None:
    qualifies = record(stay("s1", NOW - 100 * D), stay("s2", NOW - 50 * D), todays_admission("F10.20"))
    for status in ("accepted", "enrolled"):
        acted = dataclasses.replace(qualifies, candidates=(candidate("SUD-ENS", "cur", status),))
        assert decide.plan(acted, RULES, NOW) == decide.Plan()
    # A pending candidate of a trigger no longer current: the in-order feed's, whatever came late.
    old = dataclasses.replace(qualifies, candidates=(candidate("SUD-ENS", "cur", trigger_at=NOW - 5 * D),))
    assert decide.plan(old, RULES, NOW) == decide.Plan()


def test_a_declined_stay_is_not_proposed_again_but_a_superseded_one_may_be() -> None:
    qualifies = record(stay("s1", NOW - 100 * D), stay("s2", NOW - 50 * D), todays_admission("F10.20"))
    declined = dataclasses.replace(qualifies, candidates=(candidate("TOC", "cur", "declined"),))
    assert decide.plan(declined, RULES, NOW).create is None
    superseded = candidate("TOC", "cur", "withdrawn", reason=decide.SUPERSEDED)
    again = decide.plan(dataclasses.replace(qualifies, candidates=(superseded,)), RULES, NOW)
    assert again.create is not None and again.create.program == "TOC"


def test_only_encounters_changed_since_the_first_current_trigger_are_unfolded() -> None:
    long_ago = stay("s1", NOW - 100 * D)
    recent = dataclasses.replace(stay("s2", NOW - 5 * D), last_event_time=NOW - H)  # an A08 an hour ago
    person = record(long_ago, recent, todays_admission("F10.20"))
    triggers = decide.current_triggers(person, RULES, NOW)
    assert decide.unfold_needed(person, triggers) == ["s2"]
    assert decide.unfold_needed(person, []) == []
