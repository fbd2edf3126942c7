"""Level-triggered decisions: what the in-order feed proposes for a person, from the facts alone.

Who is proposed must not depend on the order the facts reached us. One person's events
come from several hospitals, hence several Kafka keys, partitions and lanes; a burst, a
backfill or the catch-up after an outage can apply today's admission before the
history that makes it count, or an A40 before the merged MRN's stays. So after any
change of a person's facts that the in-order feed would have seen earlier (an event
older than the person's latest, a merge, a link, an unlink, a flag), the store hands
this module the person's record and it answers with a `Plan`: what to propose, what to
withdraw, what decision to record. Pure: no clock, no database (style.md).

"In order" means in event order: every encounter event of the person sorted by
(event time, received at, event id), the order `history.fold` replays one encounter in,
and a partner flag at the time it was recorded. `plan` replays the person's *current*
triggers in that order (those `eligibility.evaluate` would not block as older than
``candidate_max_age_hours``), each with the history as the in-order feed had it then:

* the trigger comes from the event's encounter folded up to and including the event
  (`eligibility.trigger_for`, as the store does for each event it applies);
* the other encounters are folded from their events up to the trigger's place in the
  order; an encounter none of whose events came before it does not exist yet;
* flags count once recorded (`eligibility.evaluate` then reads their effective dates).

The first trigger that proposes a program not proposed before for the same stay (or
flag) makes the candidate, and the person then has one: later triggers are blocked, as
they are in order. Person-level facts (birth date, Medi-Cal coverage, residence) are
read as they are now: the store keeps the value of the newest event for each, whatever
the order they arrived in, but not its history.

The person's existing candidates decide what may change. A candidate the in-order feed
may yet have decided differently (``revisable``: queued or pending, the system's
proposal, made on a current trigger) is compared with the replay: kept when the replay
proposes the same program on the same stay (its recorded decision corrected when the
late facts change the criteria or evidence), withdrawn as superseded when the replay
proposes something else or nothing. Anything else binds the replay: an accepted or
enrolled candidate (people acted on it) or one made on a trigger no longer current
blocks every proposal; a closed one (declined, expired, disenrolled) means that stay
is not proposed to that program again. Candidates the system withdrew (superseded,
identities merged) bind nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Final

from enrollment_svc import eligibility, history
from enrollment_svc.model import EncounterEvent, EncounterFacts, Evaluation, Flag, PersonHistory, Trigger
from enrollment_svc.rules import Rules
from enrollment_svc.status import ACTIVE

__all__ = [
    "RELEASED",
    "SUPERSEDED",
    "CurrentTrigger",
    "PastCandidate",
    "PersonRecord",
    "Plan",
    "Proposal",
    "RecordedFlag",
    "StoredEncounter",
    "current_triggers",
    "history_as_of",
    "order_key",
    "plan",
    "recorded_decision",
    "unfold_needed",
]

# Reasons of the system's own withdrawals: such a candidate binds no later decision.
SUPERSEDED: Final = "superseded: facts arrived late"
MERGED: Final = "identities merged"
RELEASED: Final = frozenset({SUPERSEDED, MERGED})
REVISABLE: Final = frozenset({"queued", "pending"})  # nobody has acted on it yet

# (time, tie-breaker, id): an event's place in the in-order feed (`history.fold`'s order).
Key = tuple[dt.datetime, dt.datetime, str]
# What a trigger is about: ("encounter", encounter id) or ("flag", flag id).
Ref = tuple[str, str]


def order_key(event: EncounterEvent) -> Key:
    return (event.event_time, event.received_at, event.event_id)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEncounter:
    """An encounter as stored (the fold of all its events) and, when needed, those events."""

    facts: EncounterFacts
    last_event_time: dt.datetime
    events: tuple[EncounterEvent, ...] | None = None  # None: not loaded (`unfold_needed` says when it must be)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedFlag:
    flag: Flag
    recorded_at: dt.datetime  # its place in the order, and its trigger's time

    @property
    def key(self) -> Key:
        return (self.recorded_at, self.recorded_at, self.flag.id)


@dataclasses.dataclass(frozen=True, slots=True)
class PastCandidate:
    id: str
    program: str
    status: str
    status_reason: str | None
    encounter_id: str | None
    decision: Mapping[str, Any]  # as recorded (`recorded_decision`)
    rule_version: str

    @property
    def ref(self) -> Ref | None:
        if self.encounter_id is not None:
            return ("encounter", self.encounter_id)
        flag_id = self.decision.get("flag_id")
        return ("flag", str(flag_id)) if flag_id else None

    @property
    def released(self) -> bool:
        return self.status == "withdrawn" and self.status_reason in RELEASED

    @property
    def trigger_at(self) -> dt.datetime | None:
        at = self.decision.get("trigger_at")
        return dt.datetime.fromisoformat(at) if isinstance(at, str) else None


@dataclasses.dataclass(frozen=True, slots=True)
class PersonRecord:
    """What `plan` reads of one person: facts in the rules' window, flags, candidates."""

    person_id: str
    birth_date: dt.date | None
    medi_cal: bool
    county_resident: bool | None
    encounters: tuple[StoredEncounter, ...]
    flags: tuple[RecordedFlag, ...]
    candidates: tuple[PastCandidate, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CurrentTrigger:
    key: Key
    trigger: Trigger

    @property
    def ref(self) -> Ref:
        return _ref(self.trigger)


@dataclasses.dataclass(frozen=True, slots=True)
class Proposal:
    trigger: Trigger
    evaluation: Evaluation

    @property
    def program(self) -> str:
        assert self.evaluation.proposed is not None
        return self.evaluation.proposed

    def record(self) -> dict[str, Any]:
        return recorded_decision(self.trigger, self.evaluation)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to write so the person's candidates are those of the in-order feed."""

    proposal: Proposal | None = None  # what the in-order feed proposes on the current triggers
    withdraw: str | None = None  # a revisable candidate it would not have made (superseded)
    create: Proposal | None = None  # the candidate to make
    revise: str | None = None  # a kept candidate whose recorded decision becomes ``proposal``'s

    @property
    def changes(self) -> bool:
        return bool(self.withdraw or self.create or self.revise)


def _ref(trigger: Trigger) -> Ref:
    if trigger.encounter is not None:
        return ("encounter", trigger.encounter.id)
    assert trigger.flag is not None
    return ("flag", trigger.flag.id)


def recorded_decision(trigger: Trigger, evaluation: Evaluation) -> dict[str, Any]:
    """The decision a candidate records (its ``decision`` column), JSON values only.

    The trigger's time (and flag) say which trigger made it, so a later replay can tell
    whether it is still current and which trigger it stands for.
    """
    program = evaluation.proposed
    decision = next(d for d in evaluation.decisions if d.program == program)
    body: dict[str, Any] = {
        "reason": evaluation.reason,
        "criteria": [
            {"name": c.name, "met": c.met, "evidence": list(c.evidence), "detail": c.detail} for c in decision.criteria
        ],
        "trigger": trigger.kind,
        "trigger_at": trigger.at.astimezone(dt.UTC).isoformat(),
    }
    if trigger.flag is not None:
        body["flag_id"] = trigger.flag.id
    return body


def _limit(rules: Rules) -> dt.timedelta:
    return dt.timedelta(hours=rules.candidate_max_age_hours)


def _is_current(trigger: Trigger, now: dt.datetime, limit: dt.timedelta) -> bool:
    """Whether `eligibility.evaluate` would judge the trigger recent enough to propose on."""
    end = trigger.encounter.end if trigger.encounter is not None else None
    return not (now - trigger.at > limit or (end is not None and now - end > limit))


def _sorted_events(events: Iterable[EncounterEvent]) -> list[EncounterEvent]:
    return sorted(events, key=order_key)


def current_triggers(record: PersonRecord, rules: Rules, now: dt.datetime) -> list[CurrentTrigger]:
    """Every current trigger of the person's unfolded encounters and flags, in order.

    An encounter's events make the triggers they made when applied in order: each one
    against the encounter folded up to it.
    """
    limit = _limit(rules)
    found: list[CurrentTrigger] = []
    for stored in record.encounters:
        if stored.events is None:
            continue
        facts = stored.facts
        events = _sorted_events(stored.events)
        for i, event in enumerate(events):
            state = history.fold(facts.facility, facts.visit_number, events[: i + 1])
            if state is None:
                continue
            trigger = eligibility.trigger_for(
                event.trigger, history.facts(facts.id, state, rules), event_time=event.event_time
            )
            if trigger is not None and _is_current(trigger, now, limit):
                found.append(CurrentTrigger(order_key(event), trigger))
    for recorded in record.flags:
        trigger = eligibility.flag_trigger(recorded.flag, recorded.recorded_at)
        if _is_current(trigger, now, limit):
            found.append(CurrentTrigger(recorded.key, trigger))
    return sorted(found, key=lambda t: t.key)


def unfold_needed(record: PersonRecord, triggers: Iterable[CurrentTrigger]) -> list[str]:
    """Encounters whose events must be loaded to fold them as of the earliest trigger:
    those with an event at or after it (their stored state may include later events)."""
    keys = [t.key for t in triggers]
    if not keys:
        return []
    first = min(keys)[0]
    return [s.facts.id for s in record.encounters if s.events is None and s.last_event_time >= first]


def history_as_of(record: PersonRecord, key: Key, rules: Rules) -> PersonHistory:
    """The person's history as the in-order feed had it when the event at ``key`` was applied."""
    encounters: list[EncounterFacts] = []
    for stored in record.encounters:
        if stored.events is None or stored.last_event_time < key[0]:
            encounters.append(stored.facts)  # every event of it came before
            continue
        facts = stored.facts
        state = history.fold(facts.facility, facts.visit_number, [e for e in stored.events if order_key(e) <= key])
        if state is not None:
            encounters.append(history.facts(facts.id, state, rules))
    return PersonHistory(
        person_id=record.person_id,
        birth_date=record.birth_date,
        medi_cal=record.medi_cal,
        county_resident=record.county_resident,
        encounters=tuple(sorted(encounters, key=lambda e: (e.start, e.id))),
        flags=tuple(f.flag for f in record.flags if f.key <= key),
        active_program=None,
    )


def plan(
    record: PersonRecord, rules: Rules, now: dt.datetime, triggers: list[CurrentTrigger] | None = None
) -> Plan:
    """What to write so the person's candidates are those of the in-order feed (module docstring)."""
    if triggers is None:
        triggers = current_triggers(record, rules, now)
    horizon = now - _limit(rules)
    refs = {t.ref for t in triggers}
    revisable = [
        c for c in record.candidates
        if c.status in REVISABLE and c.ref in refs and c.trigger_at is not None and c.trigger_at >= horizon
    ]
    if any(c.status in ACTIVE and c not in revisable for c in record.candidates):
        return Plan()  # the person has a candidate the replay may not touch: it blocks, in any order
    seen = {(c.program, c.ref) for c in record.candidates if c not in revisable and not c.released}
    proposal: Proposal | None = None
    for current in triggers:
        evaluation = eligibility.evaluate(history_as_of(record, current.key, rules), current.trigger, rules, now)
        if evaluation.proposed is not None and (evaluation.proposed, current.ref) not in seen:
            proposal = Proposal(current.trigger, evaluation)
            break
    actual = revisable[0] if revisable else None
    if actual is None:
        return Plan(proposal=proposal, create=proposal)
    if proposal is None:
        return Plan(withdraw=actual.id)
    if (actual.program, actual.ref) != (proposal.program, _ref(proposal.trigger)):
        return Plan(proposal=proposal, withdraw=actual.id, create=proposal)
    if dict(actual.decision) != proposal.record() or actual.rule_version != proposal.evaluation.rule_version:
        return Plan(proposal=proposal, revise=actual.id)
    return Plan(proposal=proposal)
