"""PostgreSQL side of the enrollment service: identities, encounters, flags, candidates.

Every change of state happens in one transaction together with its outbox rows
(`enrollment.candidates`, `enrollment.events`) and, for Kafka input, the
``processed_event`` row that makes redelivery a no-op. The relay publishes the outbox
(services/outbox.py), so a crash at any point either loses nothing or repeats nothing.

Concurrency: two service instances may see events of one person at once (a person
spans several hospitals, hence several Kafka keys). Each transaction locks the person's
row (``UPDATE person`` for ADT events, ``FOR UPDATE`` otherwise) in a statement of its
own *before* any statement that reads history or decides: under READ COMMITTED each
statement sees what was committed when it began, so the reads that follow the lock see
everything the previous holder wrote. The partial unique index
``candidate_one_active_uq`` makes "one candidate per person" hold even so. Program
capacity is counted under a row lock on ``program_capacity``, again in a later statement
than the lock.

Arrival order: the person row keeps ``events_through``, the newest event time applied.
An event in order (not older than it) is decided here on its own trigger, which is what
the in-order feed decides. An event older than it arrived late, and a merge, a link, an
unlink or a flag change whose history the earlier decisions saw: then the person's
current triggers are decided again (`_redecide`, the plan of `enrollment_svc.decide`).
Person-level facts keep the newest event's value per fact (``*_at`` columns). An
encounter is one person's (unique on facility, visit number and person): a visit number
reused for another patient is a new encounter and a feed finding
(`enrollment_svc.findings`), as are event times ahead of receipt.

Cost per event does not grow with the table: every read is by primary key, by
(facility, visit number), or by (person, start time) inside the rules' longest window.
The common ADT event (a known patient, a new visit, no candidate) is two statements: one
marks the event processed, finds the identity and updates (locks) the person; one
stores the encounter and its event and reads the person's window of history. A late
event costs a few more (the person's window with the events of its recent encounters,
flags and candidates) and a replay in Python, only for persons with a current trigger.
Statements run on the asyncpg connection beneath SQLAlchemy (`enrollment_svc.sql`),
prepared once per connection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import decide, eligibility, findings, history, metrics
from enrollment_svc.model import (
    EncounterEvent,
    EncounterFacts,
    EncounterState,
    Evaluation,
    Flag,
    PersonHistory,
    Trigger,
)
from enrollment_svc.rules import Rules
from enrollment_svc.sql import Sql
from enrollment_svc.status import ACTIVE, HOLDS_SLOT, next_status
from schemas.adt_event import AdtEventV1, Identifier, Provider, patient_key
from schemas.enrollment import (
    CriterionV1,
    EncounterRef,
    EnrollmentCandidateV1,
    EnrollmentEventV1,
    candidate_event_id,
    transition_event_id,
)

__all__ = ["Applied", "EnrollmentStore", "Topics"]

log = logging.getLogger(__name__)

_MERGE_TRIGGERS = history.MERGE_TRIGGERS  # A18 (with MRG), A34, A40, A47: MRG-1 → PID-3

# A caller's SQLAlchemy connection (API, replay, tests) or the handler's driver connection.
Conn = AsyncConnection | Sql


@dataclasses.dataclass(frozen=True)
class Topics:
    candidates: str = "enrollment.candidates"
    events: str = "enrollment.events"


@dataclasses.dataclass(frozen=True)
class _Proposal:
    """A queued candidate's proposal, read and built (`EnrollmentStore._proposal`), not yet written."""

    candidate: EnrollmentCandidateV1
    transition: EnrollmentEventV1


@dataclasses.dataclass(frozen=True)
class Applied:
    """What one input did: for logs, metrics and tests (ids only, no PHI)."""

    duplicate: bool = False
    parked: bool = False  # set aside by the handler (services.parking): nothing of it was applied
    person_id: uuid.UUID | None = None
    encounter_id: uuid.UUID | None = None
    evaluation: Evaluation | None = None
    candidate_id: uuid.UUID | None = None
    candidate_status: str | None = None


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def _flat(value: Any) -> dict[str, Any]:
    """A dataclass of flat values (times, strings, tuples of strings) as a dict for `json.dumps`:
    `dataclasses.asdict` would deep-copy every value first, for nothing."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def _json(value: Any) -> Any:
    """A jsonb value: decoded already on a connection with SQLAlchemy's codec, text without it."""
    return json.loads(value) if isinstance(value, str) else value


def _event_body(ev: EncounterEvent) -> str:
    return json.dumps(_flat(ev), default=_json_default)


def event_from_body(body: dict[str, Any] | str) -> EncounterEvent:
    if isinstance(body, str):  # jsonb read on a connection without SQLAlchemy's json codec
        body = json.loads(body)
        assert isinstance(body, dict)
    times = ("event_time", "received_at", "admit_time", "discharge_time")
    values: dict[str, Any] = {
        k: (dt.datetime.fromisoformat(v) if k in times and v is not None else v) for k, v in body.items()
    }
    values["diagnoses"] = tuple(values.get("diagnoses", ()))
    return EncounterEvent(**values)


# --- statements of the ADT path ------------------------------------------------------------

# Person-level facts keep the value of the newest event that states them (by event time,
# ``:t``), whatever order events arrive in: a backfilled stay of last spring must not
# overwrite today's coverage. An event that does not state one (None, no PD1-4 / ROL PP)
# leaves it. ``events_through`` is the newest encounter event time (``:et``) applied: an
# event older than it arrived late, and ``late`` says so (decide.py).
_PERSON_FACTS = (
    "birth_date = CASE WHEN CAST(:b AS date) IS NULL OR CAST(:t AS timestamptz) < birth_date_at THEN birth_date "
    "ELSE :b END, "
    "birth_date_at = CASE WHEN CAST(:b AS date) IS NULL OR :t < birth_date_at THEN birth_date_at ELSE :t END, "
    "medi_cal = CASE WHEN CAST(:mc AS boolean) IS NULL OR :t < medi_cal_at THEN medi_cal ELSE :mc END, "
    "medi_cal_at = CASE WHEN CAST(:mc AS boolean) IS NULL OR :t < medi_cal_at THEN medi_cal_at ELSE :t END, "
    "county_resident = CASE WHEN CAST(:cr AS boolean) IS NULL OR :t < county_resident_at THEN county_resident "
    "ELSE :cr END, "
    "county_resident_at = CASE WHEN CAST(:cr AS boolean) IS NULL OR :t < county_resident_at "
    "THEN county_resident_at ELSE :t END, "
    "primary_care = CASE WHEN CAST(:pc AS text) = '[]' OR :t < primary_care_at THEN primary_care "
    "ELSE CAST(:pc AS jsonb) END, "
    "primary_care_at = CASE WHEN :pc = '[]' OR :t < primary_care_at THEN primary_care_at ELSE :t END, "
    "events_through = GREATEST(events_through, CAST(:et AS timestamptz)), updated_at = now()"
)
_LATE = "COALESCE(events_through > CAST(:et AS timestamptz), false) AS late"

# Mark the event processed, find its identity and, on the common path (the identity is
# known, not merged away, and any Medi-Cal id it carries is already the person's), update
# the person: that UPDATE is the per-person lock. Anything else is left to the general path.
_MARK_AND_UPDATE = (
    "WITH p AS (INSERT INTO processed_event (event_id) VALUES (:e) ON CONFLICT DO NOTHING RETURNING event_id), "
    "i AS (SELECT person_id, merged_into FROM identity WHERE key = :k), "
    f"u AS (UPDATE person SET {_PERSON_FACTS} "
    "WHERE id = (SELECT person_id FROM i WHERE merged_into IS NULL) AND :fast AND EXISTS (SELECT 1 FROM p) "
    f"AND (CAST(:m AS text) IS NULL OR medi_cal_id = :m) RETURNING id, {_LATE}) "
    "SELECT EXISTS (SELECT 1 FROM p) AS fresh, i.person_id, i.merged_into, EXISTS (SELECT 1 FROM u) AS updated, "
    "COALESCE((SELECT late FROM u), false) AS late FROM (SELECT 1) AS one LEFT JOIN i ON true"
)

_UPDATE_PERSON = f"UPDATE person SET {_PERSON_FACTS} WHERE id = :p RETURNING {_LATE}"

# One person's window of history (`PersonHistory`), from the person row ``h``.
_HISTORY_COLUMNS = (
    "h.birth_date, h.medi_cal, h.county_resident, "
    "(SELECT program FROM candidate WHERE person_id = h.id AND status = ANY(:active) LIMIT 1) AS active_program, "
    "EXISTS (SELECT 1 FROM patient_flag WHERE person_id = h.id) AS has_flags, "
    "ARRAY(SELECT ROW(e.id, e.facility, e.visit_number, e.kind, e.status, e.start_at, e.end_at, e.dx_flags) "
    "FROM encounter e WHERE e.person_id = h.id AND e.start_at >= :since ORDER BY e.start_at) AS encounters"
)

_LOAD_HISTORY = f"SELECT {_HISTORY_COLUMNS} FROM person h WHERE h.id = :p"

# A person's encounters in the window for deciding again (`_redecide`), with the events of
# those that may hold a current trigger (a time of theirs within ``candidate_max_age_hours``).
_RECORD_ENCOUNTERS = (
    "SELECT e.id, e.facility, e.visit_number, e.kind, e.status, e.start_at, e.end_at, e.dx_flags, e.last_event_time, "
    "CASE WHEN GREATEST(e.last_event_time, e.start_at, e.end_at) >= :recent "
    "THEN ARRAY(SELECT v.body FROM encounter_event v WHERE v.encounter_id = e.id) END AS bodies "
    "FROM encounter e WHERE e.person_id = :p AND e.start_at >= :since"
)

# Store the encounter (a new one already in its folded state: it has this one event) and
# the event; return the encounter's stored events when it is not new, and the person's
# window of history when it is new and the event triggers a decision. The statement's
# reads do not see its own inserts: the caller adds this encounter to the history itself.
# An encounter is one patient's: the same facility and visit number under another person
# is a new encounter, and ``reused`` says the sender reused the number (a feed finding).
_STORE_ENCOUNTER = (
    "WITH enc AS (INSERT INTO encounter (id, facility, visit_number, identity_key, person_id, kind, status, "
    "patient_class, hospital_service, start_at, end_at, dx_flags, diagnoses, last_event_time) "
    "VALUES (:id, :f, :v, :k, :p, :kind, :status, :pc, :hs, :start, :end, :flags, :dx, :t) "
    "ON CONFLICT (facility, visit_number, person_id) DO UPDATE SET updated_at = now() "
    "RETURNING id, (xmax = 0) AS inserted), "
    "ins AS (INSERT INTO encounter_event (event_id, encounter_id, trigger_event, event_time, body) "
    "SELECT CAST(:e AS uuid), enc.id, CAST(:tr AS text), CAST(:et AS timestamptz), CAST(:body AS jsonb) FROM enc "
    "ON CONFLICT DO NOTHING) "
    "SELECT enc.id, enc.inserted, enc.inserted AND EXISTS (SELECT 1 FROM encounter o WHERE o.facility = :f "
    "AND o.visit_number = :v AND o.person_id <> :p) AS reused, "
    "CASE WHEN enc.inserted THEN NULL ELSE ARRAY(SELECT body FROM encounter_event WHERE encounter_id = enc.id) "
    f"END AS bodies, hist.* FROM enc LEFT JOIN LATERAL (SELECT h.id AS history_of, {_HISTORY_COLUMNS} "
    "FROM person h WHERE h.id = :p AND enc.inserted AND :want) AS hist ON true"
)

_SAVE_ENCOUNTER = (
    "UPDATE encounter SET kind = :kind, status = :status, patient_class = :pc, hospital_service = :hs, "
    "start_at = :start, end_at = :end, dx_flags = :flags, diagnoses = :dx, "
    "last_event_time = :t, updated_at = now() WHERE id = :id"
)

# The same update, and the person's window of history as it was before it.
_SAVE_ENCOUNTER_AND_LOAD_HISTORY = (
    f"WITH s AS ({_SAVE_ENCOUNTER}) SELECT {_HISTORY_COLUMNS} FROM person h WHERE h.id = :p"
)


def _encounter_params(encounter_id: uuid.UUID, state: EncounterState, facts: EncounterFacts) -> dict[str, Any]:
    return {
        "id": encounter_id,
        "kind": facts.kind,
        "status": state.status,
        "pc": state.patient_class,
        "hs": state.hospital_service,
        "start": state.start,
        "end": state.end,
        "flags": sorted(facts.dx_flags),
        "dx": sorted(state.diagnoses),
        "t": state.last_event_time,
    }


class EnrollmentStore:
    """The enrollment service's unit of work, over one connection the caller opened.

    Every method runs inside the caller's transaction: an SQLAlchemy `AsyncConnection`
    (``engine.begin()``) or the handler's `Sql` on a driver connection it began itself.
    """

    def __init__(self, rules: Rules, topics: Topics = Topics()) -> None:
        self.rules = rules
        self.topics = topics

    # --- setup ----------------------------------------------------------------------------

    async def sync_capacity(self, conn: Conn) -> None:
        """Make ``program_capacity`` say what the rules say (run at start, in a transaction)."""
        db = await Sql.of(conn)
        for program, spec in self.rules.programs.items():
            await db.execute(
                "INSERT INTO program_capacity (program, capacity) VALUES (:p, :c) "
                "ON CONFLICT (program) DO UPDATE SET capacity = EXCLUDED.capacity",
                {"p": program, "c": spec.capacity},
            )

    # --- ADT input ------------------------------------------------------------------------

    async def apply_adt_event(self, conn: Conn, event: AdtEventV1, now: dt.datetime) -> Applied:
        """Apply one `adt.events` record, inside the caller's transaction. Idempotent by event id."""
        db = await Sql.of(conn)
        first = event.patient.identifiers[0] if event.patient.identifiers else None
        authority = (first.assigning_authority if first else None) or event.sending_facility
        key = event.patient.patient_key or (patient_key(authority, first.value) if first else "")
        usable = event.processing_id == "P" and first is not None
        zone = self.rules.site.zone()
        ev = history.encounter_event(event, zone)
        stated_at = history.to_utc(event.event_time or event.message_time, zone) or history.to_utc(
            event.received_at, zone
        )
        person = {**self._person_params(event), "t": stated_at, "et": ev.event_time if ev is not None else None}
        marked = await db.one(
            _MARK_AND_UPDATE,
            {
                "e": event.event_id,
                "k": key,
                "fast": usable and event.trigger_event not in _MERGE_TRIGGERS,
                "m": event.patient.medi_cal_id or None,
                **person,
            },
        )
        if not marked["fresh"]:
            return Applied(duplicate=True)
        if not usable or first is None:
            return Applied()  # training / debugging messages (MSH-11 T, D) build no history
        await self._clock_finding(db, event, key, stated_at)
        # A merge (A40 and its kin, or two identities found to share a Medi-Cal id) changes
        # whose history this is: the person's triggers are decided again, as for a late event.
        regroup = False
        if marked["updated"]:
            person_id: uuid.UUID = marked["person_id"]
            late: bool = marked["late"]
        else:
            known = marked if marked["person_id"] is not None else None
            person_id, regroup = await self._resolve(db, key, first, authority, event.patient.medi_cal_id, known)
            if event.trigger_event in _MERGE_TRIGGERS:
                for prior in event.prior_identifiers:
                    prior_authority = prior.assigning_authority or event.sending_facility
                    prior_key = patient_key(prior_authority, prior.value)
                    if prior_key != key:
                        regroup |= await self._merge_identity(db, prior_key, key, person_id, now,
                                                              actor="adt:" + event.trigger_event,
                                                              prior=prior, prior_authority=prior_authority)
            late = await db.scalar(_UPDATE_PERSON, {"p": person_id, **person})

        if ev is None or event.visit is None or event.visit.visit_number is None:
            if regroup:
                return await self._redecide(db, person_id, now)
            return Applied(person_id=person_id)
        return await self._apply_encounter_event(
            db, event.trigger_event, event.sending_facility, event.visit.visit_number, key, person_id, ev, now,
            late=late or regroup,
        )

    def _person_params(self, event: AdtEventV1) -> dict[str, Any]:
        return {
            "b": event.patient.birth_date,
            "mc": eligibility.is_medi_cal(event, self.rules),
            "cr": eligibility.county_resident(event, self.rules),
            "pc": json.dumps([p.model_dump(mode="json") for p in event.primary_care]),
        }

    async def _clock_finding(self, db: Sql, event: AdtEventV1, key: str, stated_at: dt.datetime | None) -> None:
        """Count an event time further ahead of receipt than the margin (a sender's clock or time
        zone is wrong); the event itself is used as it is."""
        received_at = history.to_utc(event.received_at, self.rules.site.zone())
        assert received_at is not None  # a required field of adt.events
        margin = dt.timedelta(minutes=self.rules.site.clock_ahead_margin_minutes)
        if findings.clock_ahead(stated_at, received_at, margin):
            await findings.count(db, event.sending_facility, findings.CLOCK_AHEAD, key, received_at)

    async def _resolve(
        self,
        db: Sql,
        key: str,
        ident: Identifier,
        authority: str,
        medi_cal_id: str | None,
        row: Any,
    ) -> tuple[uuid.UUID, bool]:
        """The person of an identity (``row``: its identity row, None when new), creating or
        linking (by Medi-Cal id) as needed; and whether two persons were merged for it.

        No lock is taken to create: two transactions creating the same identity or the same
        Medi-Cal person collide on a unique key, and the handler retries the loser, which then
        finds the winner's rows. Merging two persons locks both."""
        seen: set[str] = set()
        while row is not None and row["merged_into"] is not None and row["merged_into"] not in seen:
            seen.add(row["merged_into"])  # an A40-merged MRN: history lives with the survivor
            row = await db.row("SELECT person_id, merged_into FROM identity WHERE key = :k", {"k": row["merged_into"]})
        by_medi_cal: uuid.UUID | None = None
        if medi_cal_id:
            by_medi_cal = await db.scalar("SELECT id FROM person WHERE medi_cal_id = :m", {"m": medi_cal_id})
        if row is not None:
            person_id: uuid.UUID = row["person_id"]
            if by_medi_cal is not None and by_medi_cal != person_id:
                # The same Medi-Cal id at two hospitals: one person (programs.md, identity across hospitals).
                for p in sorted((person_id, by_medi_cal), key=str):
                    await self._lock_person(db, p)
                await self._merge_persons(db, person_id, by_medi_cal, actor="medi-cal-id", reason="same Medi-Cal id")
                return by_medi_cal, True
            if by_medi_cal is None and medi_cal_id:
                await db.execute(
                    "UPDATE person SET medi_cal_id = :m WHERE id = :p AND medi_cal_id IS NULL",
                    {"m": medi_cal_id, "p": person_id},
                )
            return person_id, False
        person_id = by_medi_cal or uuid.uuid4()
        if by_medi_cal is None:
            await db.execute("INSERT INTO person (id, medi_cal_id) VALUES (:p, :m)", {"p": person_id, "m": medi_cal_id})
        await db.execute(
            "INSERT INTO identity (key, person_id, authority, value, type_code) VALUES (:k, :p, :a, :v, :t)",
            {"k": key, "p": person_id, "a": authority, "v": ident.value, "t": ident.type_code},
        )
        # A new identity of a known person (same Medi-Cal id) joins it: no history to regroup,
        # and its events are late or not by the person's ``events_through``.
        return person_id, False

    async def _lock_person(self, db: Sql, person_id: uuid.UUID) -> None:
        """Serialize deciding for one person: the person row's lock, held until commit (the
        UPDATE of the person in `apply_adt_event` takes the same lock for ADT events)."""
        await db.execute("SELECT 1 FROM person WHERE id = :p FOR UPDATE", {"p": person_id})

    async def _apply_encounter_event(
        self,
        db: Sql,
        trigger_event: str,
        facility: str,
        visit_number: str,
        key: str,
        person_id: uuid.UUID,
        ev: EncounterEvent,
        now: dt.datetime,
        *,
        late: bool = False,
    ) -> Applied:
        """Store the event with its encounter, re-fold the encounter, and decide.

        In order (``late`` false: the event is not older than any the person has), its own
        trigger is decided here, as the in-order feed decides it. Late, the in-order feed
        would have seen it before triggers already decided: the person's current triggers
        are decided again (`_redecide`).
        """
        # The person row is locked already; the upsert locks the encounter row. The encounter
        # as this event alone makes it: what a new encounter is stored as.
        new_id = uuid.uuid4()
        state = history.fold(facility, visit_number, [ev])
        if state is None:  # a trigger with no effect on a visit (history.TRIGGERS): nothing to store
            return Applied(person_id=person_id)
        facts = history.facts(str(new_id), state, self.rules)
        trigger = None if late else eligibility.trigger_for(trigger_event, facts, event_time=ev.event_time)
        since = trigger.at - self.rules.longest_lookback() if trigger is not None else now
        row = await db.one(
            _STORE_ENCOUNTER,
            {
                **_encounter_params(new_id, state, facts),
                "f": facility,
                "v": visit_number,
                "k": key,
                "p": person_id,
                "e": uuid.UUID(ev.event_id),
                "tr": ev.trigger,
                "et": ev.event_time,
                "body": _event_body(ev),
                "active": list(ACTIVE),
                "since": since,
                "want": trigger is not None,
            },
        )
        encounter_id: uuid.UUID = row["id"]
        if row["reused"]:
            await findings.count(db, facility, findings.VISIT_REUSED, key, ev.received_at)
        loaded: Any = row if row["history_of"] is not None else None
        if not row["inserted"]:
            # Events already stored (a redelivered one counts once: fold dedupes by event id).
            state = history.fold(facility, visit_number, [*map(event_from_body, row["bodies"]), ev])
            if state is None:  # unreachable: ev folds alone (above), so it folds with the others
                return Applied(person_id=person_id, encounter_id=encounter_id)
            facts = history.facts(str(encounter_id), state, self.rules)
            trigger = None if late else eligibility.trigger_for(trigger_event, facts, event_time=ev.event_time)
            params = _encounter_params(encounter_id, state, facts)
            if trigger is None:
                await db.execute(_SAVE_ENCOUNTER, params)
            else:
                since = trigger.at - self.rules.longest_lookback()
                loaded = await db.one(
                    _SAVE_ENCOUNTER_AND_LOAD_HISTORY,
                    {**params, "p": person_id, "active": list(ACTIVE), "since": since},
                )
        if late:
            return await self._redecide(db, person_id, now, encounter_id)
        if trigger is None:
            return Applied(person_id=person_id, encounter_id=encounter_id)
        # The statement read the person's encounters as they were before it: this one is
        # added (or replaced) here, when within the window.
        person_history = await self._history(db, person_id, since, loaded)
        others = tuple(e for e in person_history.encounters if e.id != facts.id)
        mine = (facts,) if facts.start >= since else ()
        encounters = tuple(sorted((*others, *mine), key=lambda e: e.start))
        person_history = dataclasses.replace(person_history, encounters=encounters)
        return await self._decide(db, person_id, trigger, now, encounter_id, person_history)

    async def save_encounter(
        self, conn: Conn, encounter_id: uuid.UUID, state: EncounterState, facts: EncounterFacts
    ) -> None:
        db = await Sql.of(conn)
        await db.execute(_SAVE_ENCOUNTER, _encounter_params(encounter_id, state, facts))

    # --- identities -----------------------------------------------------------------------

    async def _merge_identity(
        self, db: Sql, prior_key: str, survivor_key: str, survivor_person: uuid.UUID,
        now: dt.datetime, *, actor: str, prior: Identifier, prior_authority: str,
    ) -> bool:
        """A40 (merge patient identifier list): the prior MRN's history moves to the survivor.

        A prior MRN not seen yet is recorded as merged already (an early merge): its events,
        whenever they come, join the survivor. True when the merge is new (not a redelivery).
        """
        row = await db.row("SELECT person_id, merged_into FROM identity WHERE key = :k", {"k": prior_key})
        if row is not None and row["merged_into"] == survivor_key:
            return False  # already merged: a redelivered A40
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('merge', :a, :b, :who, 'A40')",
            {"a": prior_key, "b": survivor_key, "who": actor},
        )
        if row is None:
            await db.execute(
                "INSERT INTO identity (key, person_id, authority, value, type_code, merged_into) "
                "VALUES (:k, :p, :a, :v, :t, :s)",
                {"k": prior_key, "p": survivor_person, "a": prior_authority, "v": prior.value,
                 "t": prior.type_code, "s": survivor_key},
            )
            return False  # nothing of it is stored yet: nothing to decide again
        await db.execute("UPDATE identity SET merged_into = :s WHERE key = :k", {"s": survivor_key, "k": prior_key})
        prior_person: uuid.UUID = row["person_id"]
        if prior_person != survivor_person:
            await self._lock_person(db, prior_person)
        moving = await db.fetch("SELECT id FROM encounter WHERE identity_key = :k", {"k": prior_key})
        kept = await self._combine_visits(db, survivor_person, [r["id"] for r in moving])
        # Encounters keep their (facility, visit number) key, so moving them can never double count.
        await db.execute(
            "UPDATE encounter SET identity_key = :s, person_id = :p WHERE id = ANY(:ids)",
            {"s": survivor_key, "p": survivor_person, "ids": kept},
        )
        await db.execute(
            "UPDATE patient_flag SET identity_key = :s, person_id = :p WHERE identity_key = :k",
            {"s": survivor_key, "p": survivor_person, "k": prior_key},
        )
        if prior_person != survivor_person:
            remaining = await db.scalar(
                "SELECT count(*) FROM identity WHERE person_id = :p AND merged_into IS NULL AND key <> :k",
                {"p": prior_person, "k": prior_key},
            )
            await db.execute(
                "UPDATE identity SET person_id = :s WHERE key = :k", {"s": survivor_person, "k": prior_key}
            )
            await self._carry_events_through(db, prior_person, survivor_person)
            if not remaining:
                await self._move_candidates(db, prior_person, survivor_person, now, actor=actor)
        return True

    async def _merge_persons(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, *, actor: str, reason: str
    ) -> None:
        """One person of two (the caller holds both locks): identities, encounters, flags, candidates."""
        moving = await db.fetch("SELECT id FROM encounter WHERE person_id = :f", {"f": from_person})
        kept = await self._combine_visits(db, into_person, [r["id"] for r in moving])
        await db.execute("UPDATE encounter SET person_id = :i WHERE id = ANY(:ids)", {"i": into_person, "ids": kept})
        for table in ("identity", "patient_flag"):
            await db.execute(
                f"UPDATE {table} SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
            )
        await self._carry_events_through(db, from_person, into_person)
        await self._move_candidates(db, from_person, into_person, dt.datetime.now(dt.UTC), actor=actor)
        mc = await db.scalar("SELECT medi_cal_id FROM person WHERE id = :f", {"f": from_person})
        if mc is not None:
            await db.execute("UPDATE person SET medi_cal_id = NULL WHERE id = :f", {"f": from_person})
            await db.execute(
                "UPDATE person SET medi_cal_id = COALESCE(medi_cal_id, :m) WHERE id = :i", {"m": mc, "i": into_person}
            )

    async def _carry_events_through(self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID) -> None:
        await db.execute(
            "UPDATE person SET events_through = GREATEST(events_through, "
            "(SELECT events_through FROM person WHERE id = :f)) WHERE id = :i",
            {"f": from_person, "i": into_person},
        )

    async def _combine_visits(self, db: Sql, into_person: uuid.UUID, moving: list[uuid.UUID]) -> list[uuid.UUID]:
        """Of the encounters ``moving`` to ``into_person``, fold each one whose facility and visit
        number the person has already into that encounter (one visit of one patient is one
        encounter: the events of both, re-folded); the others are returned, to be moved."""
        pairs = await db.fetch(
            "SELECT b.id AS gone, a.id AS kept FROM encounter b JOIN encounter a ON a.facility = b.facility "
            "AND a.visit_number = b.visit_number AND a.person_id = :i AND a.id <> b.id WHERE b.id = ANY(:ids)",
            {"i": into_person, "ids": moving},
        )
        for pair in pairs:
            ids = {"k": pair["kept"], "g": pair["gone"]}
            await db.execute("UPDATE encounter_event SET encounter_id = :k WHERE encounter_id = :g", ids)
            await db.execute("UPDATE candidate SET encounter_id = :k WHERE encounter_id = :g", ids)
            await db.execute("DELETE FROM encounter WHERE id = :g", ids)
            await self._refold(db, pair["kept"])
        gone = {pair["gone"] for pair in pairs}
        return [i for i in moving if i not in gone]

    async def _refold(self, db: Sql, encounter_id: uuid.UUID) -> None:
        row = await db.one(
            "SELECT facility, visit_number, ARRAY(SELECT body FROM encounter_event WHERE encounter_id = e.id) "
            "AS bodies FROM encounter e WHERE id = :e",
            {"e": encounter_id},
        )
        state = history.fold(row["facility"], row["visit_number"], map(event_from_body, row["bodies"]))
        if state is not None:
            await db.execute(
                _SAVE_ENCOUNTER, _encounter_params(encounter_id, state, history.facts(str(encounter_id), state,
                                                                                      self.rules))
            )

    async def _move_candidates(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, now: dt.datetime, *, actor: str
    ) -> None:
        """One active candidate per person survives a merge: the survivor's; the other is withdrawn
        (`decide.MERGED`: it binds no later decision, which the merged person's replay makes)."""
        survivor_has = await db.scalar(
            "SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)", {"p": into_person, "a": list(ACTIVE)}
        )
        if survivor_has is not None:
            moving = await db.scalar(
                "SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)",
                {"p": from_person, "a": list(ACTIVE)},
            )
            if moving is not None:
                await self._transition(db, moving, "withdraw", actor="system", reason=decide.MERGED, now=now)
        await db.execute(
            "UPDATE candidate SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
        )

    async def link(
        self, conn: Conn, key_a: str, key_b: str, *, actor: str, reason: str, now: dt.datetime | None = None
    ) -> uuid.UUID:
        """Link two identities as one person (the care team's decision, with who and why); the
        person's current triggers are decided again on the joined history."""
        db = await Sql.of(conn)
        now = now or dt.datetime.now(dt.UTC)
        persons = []
        for key in (key_a, key_b):
            person = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
            if person is None:
                raise LookupError("unknown identity")
            persons.append(person)
        for p in sorted(set(persons), key=str):
            await self._lock_person(db, p)
        if persons[0] != persons[1]:
            await self._merge_persons(db, persons[1], persons[0], actor=actor, reason=reason)
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('link', :a, :b, :w, :r)",
            {"a": key_a, "b": key_b, "w": actor, "r": reason},
        )
        result: uuid.UUID = persons[0]
        if persons[0] != persons[1]:
            await self._redecide(db, result, now)
        return result

    async def unlink(
        self, conn: Conn, key: str, *, actor: str, reason: str, now: dt.datetime | None = None
    ) -> uuid.UUID:
        """Split one identity (with its encounters and flags) off its person, into a new person;
        both are decided again (a candidate made on the other's history may not stand)."""
        db = await Sql.of(conn)
        now = now or dt.datetime.now(dt.UTC)
        person = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person is None:
            raise LookupError("unknown identity")
        await self._lock_person(db, person)
        new_person = uuid.uuid4()
        await db.execute("INSERT INTO person (id) VALUES (:p)", {"p": new_person})
        # The identity takes with it the MRNs merged into it (A40), their encounters and flags.
        keys = [key, *(r["key"] for r in await db.fetch("SELECT key FROM identity WHERE merged_into = :k", {"k": key}))]
        await db.execute("UPDATE identity SET person_id = :n WHERE key = ANY(:keys)", {"n": new_person, "keys": keys})
        await db.execute(
            "UPDATE encounter SET person_id = :n WHERE identity_key = ANY(:keys)", {"n": new_person, "keys": keys}
        )
        await db.execute(
            "UPDATE patient_flag SET person_id = :n WHERE identity_key = ANY(:keys)", {"n": new_person, "keys": keys}
        )
        await db.execute(
            "UPDATE person SET events_through = (SELECT max(last_event_time) FROM encounter WHERE person_id = :n) "
            "WHERE id = :n",
            {"n": new_person},
        )
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('unlink', :a, :a, :w, :r)",
            {"a": key, "w": actor, "r": reason},
        )
        await self._redecide(db, person, now)
        await self._redecide(db, new_person, now)
        return new_person

    # --- flags ----------------------------------------------------------------------------

    async def add_flag(
        self,
        conn: Conn,
        key: str,
        flag: Flag,
        *,
        recorded_by: str,
        now: dt.datetime,
    ) -> Applied:
        """Record a partner system's fact and decide the person's current triggers again, the
        flag's own among them (it triggers at ``now``, when it was recorded)."""
        db = await Sql.of(conn)
        person_id = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person_id is None:
            raise LookupError("unknown identity")
        await self._lock_person(db, person_id)
        await db.execute(
            "INSERT INTO patient_flag (id, person_id, identity_key, kind, source, effective, until, detail, "
            "recorded_by, recorded_at) VALUES (:id, :p, :k, :kind, :src, :eff, :until, :detail, :by, :now)",
            {
                "id": uuid.UUID(flag.id),
                "p": person_id,
                "k": key,
                "kind": flag.kind,
                "src": flag.source,
                "eff": flag.effective,
                "until": flag.until,
                "detail": flag.detail,
                "by": recorded_by,
                "now": now,
            },
        )
        # A flag takes its place in the order when recorded: an ADT event older than it is late.
        await db.execute(
            "UPDATE person SET events_through = GREATEST(events_through, :now) WHERE id = :p",
            {"now": now, "p": person_id},
        )
        return await self._redecide(db, person_id, now)

    # --- deciding -------------------------------------------------------------------------

    async def load_history(self, conn: Conn, person_id: uuid.UUID, at: dt.datetime) -> PersonHistory:
        db = await Sql.of(conn)
        return await self._history(db, person_id, at - self.rules.longest_lookback(), None)

    async def _history(self, db: Sql, person_id: uuid.UUID, since: dt.datetime, row: Any) -> PersonHistory:
        """The person's history from ``row`` (`_HISTORY_COLUMNS`, read already) or read now."""
        if row is None:
            row = await db.one(_LOAD_HISTORY, {"p": person_id, "active": list(ACTIVE), "since": since})
        encounters = tuple(
            EncounterFacts(
                id=str(e_id), facility=facility, visit_number=visit_number, kind=kind, status=status,
                start=start, end=end, dx_flags=frozenset(flags),
            )
            for e_id, facility, visit_number, kind, status, start, end, flags in row["encounters"]
        )
        flags: tuple[Flag, ...] = ()
        if row["has_flags"]:
            flags = tuple(
                Flag(
                    id=str(r["id"]), kind=r["kind"], source=r["source"], effective=r["effective"], until=r["until"],
                    detail=r["detail"],
                )
                for r in await db.fetch(
                    "SELECT id, kind, source, effective, until, detail FROM patient_flag "
                    "WHERE person_id = :p AND (effective >= :since OR until IS NULL OR until >= :since)",
                    {"p": person_id, "since": since},
                )
            )
        return PersonHistory(
            person_id=str(person_id),
            birth_date=row["birth_date"],
            medi_cal=row["medi_cal"],
            county_resident=row["county_resident"],
            encounters=encounters,
            flags=flags,
            active_program=row["active_program"],
        )

    async def _decide(
        self,
        db: Sql,
        person_id: uuid.UUID,
        trigger: Trigger,
        now: dt.datetime,
        encounter_id: uuid.UUID | None,
        person_history: PersonHistory | None,
    ) -> Applied:
        if person_history is None:
            person_history = await self._history(db, person_id, trigger.at - self.rules.longest_lookback(), None)
        evaluation = eligibility.evaluate(person_history, trigger, self.rules, now)
        if evaluation.proposed is None:
            return Applied(person_id=person_id, encounter_id=encounter_id, evaluation=evaluation)
        candidate_id, status = await self._create_candidate(db, person_id, trigger, evaluation, now)
        return Applied(
            person_id=person_id,
            encounter_id=encounter_id,
            evaluation=evaluation,
            candidate_id=candidate_id,
            candidate_status=status,
        )

    async def _redecide(
        self, db: Sql, person_id: uuid.UUID, now: dt.datetime, encounter_id: uuid.UUID | None = None
    ) -> Applied:
        """Decide the person's current triggers again, as the in-order feed would have (decide.py),
        and write the difference: withdraw a superseded candidate, make the right one, correct a
        kept one's recorded decision. The caller holds the person's lock."""
        record = await self._load_record(db, person_id, now)
        triggers = decide.current_triggers(record, self.rules, now)
        if not triggers:
            return Applied(person_id=person_id, encounter_id=encounter_id)
        missing = decide.unfold_needed(record, triggers)
        if missing:
            record = await self._unfold(db, record, missing)
        plan = decide.plan(record, self.rules, now, triggers)
        candidate_id: uuid.UUID | None = None
        status: str | None = None
        freed: str | None = None
        if plan.withdraw is not None:
            # The slot it held goes to the candidate that replaces it, else to the queue (below).
            await self._transition(db, uuid.UUID(plan.withdraw), "withdraw", actor="system",
                                   reason=decide.SUPERSEDED, now=now, refill=False)
            freed = next(c.program for c in record.candidates if c.id == plan.withdraw)
        if plan.create is not None:
            candidate_id, status = await self._create_candidate(
                db, person_id, plan.create.trigger, plan.create.evaluation, now
            )
        if freed is not None:
            await self._fill_slot(db, freed, now)
        if plan.revise is not None and plan.proposal is not None:
            await db.execute(
                "UPDATE candidate SET decision = CAST(:d AS jsonb), rule_version = :rv, updated_at = :now "
                "WHERE id = :c",
                {"d": json.dumps(plan.proposal.record()), "rv": plan.proposal.evaluation.rule_version, "now": now,
                 "c": uuid.UUID(plan.revise)},
            )
        if plan.changes:
            log.info("person %s decided again: withdrew %s, made %s, revised %s", person_id, plan.withdraw,
                     candidate_id, plan.revise)
        return Applied(
            person_id=person_id,
            encounter_id=encounter_id,
            evaluation=plan.proposal.evaluation if plan.proposal is not None else None,
            candidate_id=candidate_id,
            candidate_status=status,
        )

    async def _load_record(self, db: Sql, person_id: uuid.UUID, now: dt.datetime) -> decide.PersonRecord:
        """The person as `decide.plan` reads it: encounters in the window (with their events when
        they may hold a current trigger), flags, candidates."""
        recent = now - dt.timedelta(hours=self.rules.candidate_max_age_hours)
        person = await db.one(
            "SELECT birth_date, medi_cal, county_resident FROM person WHERE id = :p", {"p": person_id}
        )
        encounters = tuple(
            decide.StoredEncounter(
                facts=EncounterFacts(
                    id=str(r["id"]), facility=r["facility"], visit_number=r["visit_number"], kind=r["kind"],
                    status=r["status"], start=r["start_at"], end=r["end_at"], dx_flags=frozenset(r["dx_flags"]),
                ),
                last_event_time=r["last_event_time"],
                events=tuple(map(event_from_body, r["bodies"])) if r["bodies"] is not None else None,
            )
            for r in await db.fetch(_RECORD_ENCOUNTERS, {
                "p": person_id, "since": recent - self.rules.longest_lookback(), "recent": recent,
            })
        )
        flags = tuple(
            decide.RecordedFlag(
                Flag(id=str(r["id"]), kind=r["kind"], source=r["source"], effective=r["effective"], until=r["until"],
                     detail=r["detail"]),
                r["recorded_at"],
            )
            for r in await db.fetch(
                "SELECT id, kind, source, effective, until, detail, recorded_at FROM patient_flag WHERE person_id = :p",
                {"p": person_id},
            )
        )
        candidates = tuple(
            decide.PastCandidate(
                id=str(r["id"]), program=r["program"], status=r["status"], status_reason=r["status_reason"],
                encounter_id=str(r["encounter_id"]) if r["encounter_id"] is not None else None,
                decision=_json(r["decision"]), rule_version=r["rule_version"],
            )
            for r in await db.fetch(
                "SELECT id, program, status, status_reason, encounter_id, decision, rule_version FROM candidate "
                "WHERE person_id = :p ORDER BY seq",
                {"p": person_id},
            )
        )
        return decide.PersonRecord(
            person_id=str(person_id), birth_date=person["birth_date"], medi_cal=person["medi_cal"],
            county_resident=person["county_resident"], encounters=encounters, flags=flags, candidates=candidates,
        )

    async def _unfold(self, db: Sql, record: decide.PersonRecord, ids: list[str]) -> decide.PersonRecord:
        """The record with the events of encounters ``ids`` loaded."""
        rows = await db.fetch(
            "SELECT encounter_id, array_agg(body) AS bodies FROM encounter_event WHERE encounter_id = ANY(:ids) "
            "GROUP BY encounter_id",
            {"ids": [uuid.UUID(i) for i in ids]},
        )
        events = {str(r["encounter_id"]): tuple(map(event_from_body, r["bodies"])) for r in rows}
        return dataclasses.replace(record, encounters=tuple(
            dataclasses.replace(s, events=events[s.facts.id]) if s.facts.id in events else s
            for s in record.encounters
        ))

    async def _create_candidate(
        self, db: Sql, person_id: uuid.UUID, trigger: Trigger, evaluation: Evaluation, now: dt.datetime
    ) -> tuple[uuid.UUID | None, str | None]:
        program = evaluation.proposed
        assert program is not None
        encounter = trigger.encounter
        if encounter is not None:
            # One episode per stay: an A08 or the discharge re-check after a decline proposes nothing new.
            # A candidate the system withdrew (superseded, merged) does not count (decide.py).
            seen = await db.scalar(
                "SELECT 1 FROM candidate WHERE person_id = :p AND program = :prog AND encounter_id = :e "
                "AND NOT (status = 'withdrawn' AND COALESCE(status_reason, '') = ANY(:released))",
                {"p": person_id, "prog": program, "e": uuid.UUID(encounter.id), "released": list(decide.RELEASED)},
            )
            if seen is not None:
                return None, None
        body = decide.recorded_decision(trigger, evaluation)
        candidate_id = uuid.uuid4()
        # The candidate, its first transition and that transition's outbox row in one statement;
        # none of them when another instance proposed one for this person first.
        queued = self._transition_event(candidate_id, person_id, program, None, "queued", "system", None, now, 0)
        inserted = await db.scalar(
            "WITH c AS (INSERT INTO candidate (id, person_id, program, status, facility, encounter_id, "
            "rule_version, decision, created_at, updated_at) VALUES (:id, :p, :prog, 'queued', :f, :e, :rv, "
            "CAST(:d AS jsonb), :now, :now) ON CONFLICT (person_id) "
            "WHERE status IN ('queued', 'pending', 'accepted', 'enrolled') DO NOTHING RETURNING id), "
            "t AS (INSERT INTO candidate_transition (candidate_id, from_status, to_status, actor, reason, at, "
            "event_id) SELECT id, NULL, 'queued', 'system', NULL, CAST(:now AS timestamptz), CAST(:te AS uuid) "
            "FROM c), "
            "o AS (INSERT INTO outbox (topic, key, payload, event_id) SELECT CAST(:topic AS text), CAST(:key AS text), "
            "CAST(:payload AS bytea), CAST(:te AS uuid) FROM c) "
            "SELECT id FROM c",
            {
                "id": candidate_id,
                "p": person_id,
                "prog": program,
                "f": encounter.facility if encounter else "",
                "e": uuid.UUID(encounter.id) if encounter else None,
                "rv": evaluation.rule_version,
                "d": json.dumps(body),
                "now": now,
                "te": queued.event_id,
                "topic": self.topics.events,
                "key": str(person_id),
                "payload": queued.model_dump_json().encode(),
            },
        )
        if inserted is None:
            return None, None  # another instance proposed one for this person first
        metrics.TRANSITIONS.labels(program=program, to_status="queued").inc()
        # Everything the proposal needs is read before the program's capacity row is locked: the
        # lock serializes every instance's proposals for the program, so it is held for as few
        # statements as can be (count, write, commit).
        proposal = await self._proposal(db, candidate_id, now)
        if not await self._slot_free(db, program):
            return candidate_id, "queued"
        await self._publish(db, proposal)
        return candidate_id, "pending"

    async def _propose(self, db: Sql, candidate_id: uuid.UUID, now: dt.datetime) -> None:
        """queued → pending: the candidate takes a slot and is published to the care team."""
        await self._publish(db, await self._proposal(db, candidate_id, now))

    async def _proposal(self, db: Sql, candidate_id: uuid.UUID, now: dt.datetime) -> _Proposal:
        """What proposing a queued candidate writes (`_publish`), from one read."""
        row = await db.one(
            "SELECT c.id, c.person_id, c.program, c.encounter_id, c.rule_version, c.decision, "
            "c.created_at, p.medi_cal_id, p.primary_care, "
            "(SELECT count(*) FROM candidate_transition t WHERE t.candidate_id = c.id) AS seq, "
            "ARRAY(SELECT ROW(i.value, i.authority, i.type_code) FROM identity i WHERE i.person_id = c.person_id "
            "ORDER BY i.created_at, i.key) AS identities, "
            "e.facility, e.visit_number, e.kind, e.patient_class, e.start_at, e.end_at "
            "FROM candidate c JOIN person p ON p.id = c.person_id LEFT JOIN encounter e ON e.id = c.encounter_id "
            "WHERE c.id = :c",
            {"c": candidate_id},
        )
        program = row["program"]
        expires = now + dt.timedelta(days=self.rules.programs[program].pending_expiry_days)
        trigger = None
        if row["encounter_id"] is not None:
            trigger = EncounterRef(
                encounter_id=row["encounter_id"],
                facility=row["facility"],
                visit_number=row["visit_number"],
                kind=row["kind"],
                patient_class=row["patient_class"],
                admit_time=row["start_at"],
                discharge_time=row["end_at"],
            )
        candidate = EnrollmentCandidateV1(
            event_id=candidate_event_id(candidate_id),
            candidate_id=candidate_id,
            program=program,
            person_id=row["person_id"],
            identifiers=[
                Identifier(value=value, assigning_authority=authority, type_code=type_code)
                for value, authority, type_code in row["identities"]
            ],
            medi_cal_id=row["medi_cal_id"],
            primary_care=[Provider.model_validate(p) for p in row["primary_care"]],
            trigger=trigger,
            criteria=[CriterionV1.model_validate(c) for c in row["decision"]["criteria"]],
            reason=row["decision"]["reason"],
            rule_version=row["rule_version"],
            decided_at=row["created_at"],
            expires_at=expires,
        )
        pending = self._transition_event(
            candidate_id, row["person_id"], program, "queued", "pending", "system", None, now, int(row["seq"])
        )
        return _Proposal(candidate, pending)

    async def _publish(self, db: Sql, proposal: _Proposal) -> None:
        """The candidate pending, its transition, and both outbox rows (transition first), in one statement."""
        candidate, pending = proposal.candidate, proposal.transition
        await db.execute(
            "WITH t AS (INSERT INTO candidate_transition (candidate_id, from_status, to_status, actor, reason, at, "
            "event_id) VALUES (:c, 'queued', 'pending', 'system', NULL, :now, :te)), "
            "o AS (INSERT INTO outbox (topic, key, payload, event_id) VALUES (:ttopic, :key, :tpayload, :te), "
            "(:ctopic, :key, :cpayload, :ce)) "
            "UPDATE candidate SET status = 'pending', proposed_at = :now, expires_at = :x, updated_at = :now "
            "WHERE id = :c",
            {
                "c": candidate.candidate_id,
                "now": pending.at,
                "x": candidate.expires_at,
                "te": pending.event_id,
                "ttopic": self.topics.events,
                "tpayload": pending.model_dump_json().encode(),
                "key": str(candidate.person_id),
                "ctopic": self.topics.candidates,
                "cpayload": candidate.model_dump_json().encode(),
                "ce": candidate.event_id,
            },
        )
        metrics.TRANSITIONS.labels(program=candidate.program, to_status="pending").inc()

    # --- the care team's actions ----------------------------------------------------------

    async def transition(
        self,
        conn: Conn,
        candidate_id: uuid.UUID,
        action: str,
        *,
        actor: str,
        reason: str | None,
        now: dt.datetime,
    ) -> str:
        """Apply an action of `enrollment_svc.status`; frees and refills a slot when one is released."""
        db = await Sql.of(conn)
        return await self._transition(db, candidate_id, action, actor=actor, reason=reason, now=now)

    async def _transition(
        self, db: Sql, candidate_id: uuid.UUID, action: str, *, actor: str, reason: str | None, now: dt.datetime,
        refill: bool = True,
    ) -> str:
        row = await db.row("SELECT status, program FROM candidate WHERE id = :c FOR UPDATE", {"c": candidate_id})
        if row is None:
            raise LookupError("unknown candidate")
        target = next_status(row["status"], action, reason)
        if action == "promote":
            await self._propose(db, candidate_id, now)
            return target
        await db.execute(
            "UPDATE candidate SET status = :s, status_reason = :r, updated_at = :now WHERE id = :c",
            {"s": target, "r": reason, "now": now, "c": candidate_id},
        )
        await self._record_transition(db, candidate_id, row["status"], target, actor=actor, reason=reason, now=now)
        if refill and row["status"] in HOLDS_SLOT and target not in HOLDS_SLOT:
            await self._fill_slot(db, row["program"], now)
        return target

    async def _slot_free(self, db: Sql, program: str) -> bool:
        """Whether the program has a free slot; the capacity row stays locked until commit, so
        two transactions cannot both take the last slot. The count is a statement of its own,
        after the lock: one statement's reads would not see what the previous holder committed."""
        capacity = await db.scalar(
            "SELECT capacity FROM program_capacity WHERE program = :p FOR UPDATE", {"p": program}
        )
        used = await db.scalar(
            "SELECT count(*) FROM candidate WHERE program = :p AND status = ANY(:s)",
            {"p": program, "s": list(HOLDS_SLOT)},
        )
        return bool(used < (capacity or 0))

    async def _fill_slot(self, db: Sql, program: str, now: dt.datetime) -> None:
        if not await self._slot_free(db, program):
            return
        waiting = await db.scalar(
            "SELECT id FROM candidate WHERE program = :p AND status = 'queued' ORDER BY seq LIMIT 1 "
            "FOR UPDATE SKIP LOCKED",
            {"p": program},
        )
        if waiting is not None:
            await self._propose(db, waiting, now)

    async def expire_due(self, conn: Conn, now: dt.datetime, *, limit: int = 100) -> int:
        """Expire pending candidates nobody acted on (one batch; the service calls it periodically)."""
        db = await Sql.of(conn)
        due = [
            r["id"]
            for r in await db.fetch(
                "SELECT id FROM candidate WHERE status = 'pending' AND expires_at <= :now ORDER BY expires_at "
                "LIMIT :n FOR UPDATE SKIP LOCKED",
                {"now": now, "n": limit},
            )
        ]
        for candidate_id in due:
            await self._transition(db, candidate_id, "expire", actor="system", reason="not acted on", now=now)
        return len(due)

    def _transition_event(
        self, candidate_id: uuid.UUID, person_id: uuid.UUID, program: str, from_status: str | None,
        to_status: str, actor: str, reason: str | None, now: dt.datetime, seq: int,
    ) -> EnrollmentEventV1:
        return EnrollmentEventV1(
            event_id=transition_event_id(candidate_id, to_status, seq),
            candidate_id=candidate_id,
            person_id=person_id,
            program=program,  # type: ignore[arg-type]  # programs come from the rules' closed list
            from_status=from_status,  # type: ignore[arg-type]  # statuses come from status.TRANSITIONS
            to_status=to_status,  # type: ignore[arg-type]
            actor=actor,
            reason=reason,
            at=now,
        )

    async def _record_transition(
        self,
        db: Sql,
        candidate_id: uuid.UUID,
        from_status: str | None,
        to_status: str,
        *,
        actor: str,
        reason: str | None,
        now: dt.datetime,
        known: tuple[uuid.UUID, str, int] | None = None,
    ) -> None:
        """Record a status change and its `enrollment.events` outbox row. ``known``: the
        candidate's (person, program, number of transitions so far) when the caller has them."""
        if known is None:
            row = await db.one(
                "SELECT person_id, program, (SELECT count(*) FROM candidate_transition "
                "WHERE candidate_id = :c) AS seq FROM candidate WHERE id = :c",
                {"c": candidate_id},
            )
            known = (row["person_id"], row["program"], int(row["seq"]))
        person_id, program, seq = known
        event = self._transition_event(candidate_id, person_id, program, from_status, to_status, actor, reason, now,
                                       seq)
        await db.execute(
            "WITH t AS (INSERT INTO candidate_transition (candidate_id, from_status, to_status, actor, reason, at, "
            "event_id) VALUES (:c, :f, :t, :a, :r, :at, :e)) "
            "INSERT INTO outbox (topic, key, payload, event_id) VALUES (:topic, :key, :payload, :e)",
            {"c": candidate_id, "f": from_status, "t": to_status, "a": actor, "r": reason, "at": now,
             "e": event.event_id, "topic": self.topics.events, "key": str(person_id),
             "payload": event.model_dump_json().encode()},
        )
        metrics.TRANSITIONS.labels(program=program, to_status=to_status).inc()


def identity_key(authority: str, value: str) -> str:
    """The key of an identity as the listener computes it (`adt_listener.normalize.patient_key`)."""
    return patient_key(authority, value)
