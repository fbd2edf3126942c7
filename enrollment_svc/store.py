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

Cost per event does not grow with the table: every read is by primary key, by
(facility, visit number), or by (person, start time) inside the rules' longest window.
The common ADT event (a known patient, a new visit, no candidate) is two statements: one
marks the event processed, finds the identity and updates (locks) the person; one
stores the encounter and its event and reads the person's window of history. Statements
run on the asyncpg connection beneath SQLAlchemy (`enrollment_svc.sql`), prepared once
per connection.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import eligibility, history, metrics
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
from enrollment_svc.settings import EnrollmentSettings
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
from services.outbox import Outbox

__all__ = ["Applied", "EnrollmentStore", "Topics"]

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

# Mark the event processed, find its identity and, on the common path (the identity is
# known, not merged away, and any Medi-Cal id it carries is already the person's), update
# the person: that UPDATE is the per-person lock. Anything else is left to the general path.
_MARK_AND_UPDATE = (
    "WITH p AS (INSERT INTO processed_event (event_id) VALUES (:e) ON CONFLICT DO NOTHING RETURNING event_id), "
    "i AS (SELECT person_id, merged_into FROM identity WHERE key = :k), "
    "u AS (UPDATE person SET birth_date = COALESCE(:b, birth_date), medi_cal = COALESCE(:mc, medi_cal), "
    "county_resident = COALESCE(:cr, county_resident), "
    "primary_care = CASE WHEN :pc = '[]' THEN primary_care ELSE CAST(:pc AS jsonb) END, updated_at = now() "
    "WHERE id = (SELECT person_id FROM i WHERE merged_into IS NULL) AND :fast AND EXISTS (SELECT 1 FROM p) "
    "AND (CAST(:m AS text) IS NULL OR medi_cal_id = :m) RETURNING id) "
    "SELECT EXISTS (SELECT 1 FROM p) AS fresh, i.person_id, i.merged_into, EXISTS (SELECT 1 FROM u) AS updated "
    "FROM (SELECT 1) AS one LEFT JOIN i ON true"
)

_UPDATE_PERSON = (
    "UPDATE person SET birth_date = COALESCE(:b, birth_date), medi_cal = COALESCE(:mc, medi_cal), "
    "county_resident = COALESCE(:cr, county_resident), "
    "primary_care = CASE WHEN :pc = '[]' THEN primary_care ELSE CAST(:pc AS jsonb) END, "
    "updated_at = now() WHERE id = :p"
)

# One person's window of history (`PersonHistory`), from the person row ``h``.
_HISTORY_COLUMNS = (
    "h.birth_date, h.medi_cal, h.county_resident, "
    "(SELECT program FROM candidate WHERE person_id = h.id AND status = ANY(:active) LIMIT 1) AS active_program, "
    "EXISTS (SELECT 1 FROM patient_flag WHERE person_id = h.id) AS has_flags, "
    "ARRAY(SELECT ROW(e.id, e.facility, e.visit_number, e.kind, e.status, e.start_at, e.end_at, e.dx_flags) "
    "FROM encounter e WHERE e.person_id = h.id AND e.start_at >= :since ORDER BY e.start_at) AS encounters"
)

_LOAD_HISTORY = f"SELECT {_HISTORY_COLUMNS} FROM person h WHERE h.id = :p"

# Store the encounter (a new one already in its folded state: it has this one event) and
# the event; return the encounter's stored events when it is not new, and the person's
# window of history when it is new and the event triggers a decision. The statement's
# reads do not see its own inserts: the caller adds this encounter to the history itself.
_STORE_ENCOUNTER = (
    "WITH enc AS (INSERT INTO encounter (id, facility, visit_number, identity_key, person_id, kind, status, "
    "patient_class, hospital_service, start_at, end_at, dx_flags, diagnoses, last_event_time) "
    "VALUES (:id, :f, :v, :k, :p, :kind, :status, :pc, :hs, :start, :end, :flags, :dx, :t) "
    "ON CONFLICT ON CONSTRAINT encounter_visit_uq DO UPDATE SET updated_at = now() "
    "RETURNING id, person_id, (xmax = 0) AS inserted), "
    "ins AS (INSERT INTO encounter_event (event_id, encounter_id, trigger_event, event_time, body) "
    "SELECT CAST(:e AS uuid), enc.id, CAST(:tr AS text), CAST(:et AS timestamptz), CAST(:body AS jsonb) FROM enc "
    "ON CONFLICT DO NOTHING) "
    "SELECT enc.id, enc.person_id, enc.inserted, "
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

    def __init__(self, rules: Rules, topics: Topics = Topics(), outbox: Outbox | None = None) -> None:
        self.rules = rules
        self.topics = topics
        # The service's outbox (`services.outbox`): the two topics written here must be its own.
        self.outbox = outbox or Outbox.of(EnrollmentSettings.service, (topics.candidates, topics.events))
        self.outbox.check(topics.candidates)
        self.outbox.check(topics.events)

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
        marked = await db.one(
            _MARK_AND_UPDATE,
            {
                "e": event.event_id,
                "k": key,
                "fast": usable and event.trigger_event not in _MERGE_TRIGGERS,
                "m": event.patient.medi_cal_id or None,
                **self._person_params(event),
            },
        )
        if not marked["fresh"]:
            return Applied(duplicate=True)
        if not usable or first is None:
            return Applied()  # training / debugging messages (MSH-11 T, D) build no history
        if marked["updated"]:
            person_id: uuid.UUID = marked["person_id"]
        else:
            known = marked if marked["person_id"] is not None else None
            person_id = await self._resolve(db, key, first, authority, event.patient.medi_cal_id, known)
            if event.trigger_event in _MERGE_TRIGGERS:
                for prior in event.prior_identifiers:
                    prior_key = patient_key(prior.assigning_authority or event.sending_facility, prior.value)
                    if prior_key != key:
                        await self._merge_identity(db, prior_key, key, person_id, now,
                                                   actor="adt:" + event.trigger_event)
            await db.execute(_UPDATE_PERSON, {"p": person_id, **self._person_params(event)})

        ev = history.encounter_event(event, self.rules.site.zone())
        if ev is None or event.visit is None or event.visit.visit_number is None:
            return Applied(person_id=person_id)
        return await self._apply_encounter_event(
            db, event.trigger_event, event.sending_facility, event.visit.visit_number, key, person_id, ev, now
        )

    def _person_params(self, event: AdtEventV1) -> dict[str, Any]:
        return {
            "b": event.patient.birth_date,
            "mc": eligibility.is_medi_cal(event, self.rules),
            "cr": eligibility.county_resident(event, self.rules),
            "pc": json.dumps([p.model_dump(mode="json") for p in event.primary_care]),
        }

    async def _resolve(
        self,
        db: Sql,
        key: str,
        ident: Identifier,
        authority: str,
        medi_cal_id: str | None,
        row: Any,
    ) -> uuid.UUID:
        """The person of an identity (``row``: its identity row, None when new), creating or
        linking (by Medi-Cal id) as needed.

        No lock is taken: two transactions creating the same identity or the same Medi-Cal
        person collide on a unique key, and the handler retries the loser, which then finds
        the winner's rows."""
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
                await self._merge_persons(db, person_id, by_medi_cal, actor="medi-cal-id", reason="same Medi-Cal id")
                person_id = by_medi_cal
            elif by_medi_cal is None and medi_cal_id:
                await db.execute(
                    "UPDATE person SET medi_cal_id = :m WHERE id = :p AND medi_cal_id IS NULL",
                    {"m": medi_cal_id, "p": person_id},
                )
            return person_id
        person_id = by_medi_cal or uuid.uuid4()
        if by_medi_cal is None:
            await db.execute("INSERT INTO person (id, medi_cal_id) VALUES (:p, :m)", {"p": person_id, "m": medi_cal_id})
        await db.execute(
            "INSERT INTO identity (key, person_id, authority, value, type_code) VALUES (:k, :p, :a, :v, :t)",
            {"k": key, "p": person_id, "a": authority, "v": ident.value, "t": ident.type_code},
        )
        return person_id

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
    ) -> Applied:
        """Store the event with its encounter, re-fold the encounter, and decide if it triggers."""
        # The person row is locked already; the upsert locks the encounter row. The encounter
        # as this event alone makes it: what a new encounter is stored as.
        new_id = uuid.uuid4()
        state = history.fold(facility, visit_number, [ev])
        if state is None:  # a trigger with no effect on a visit (history.TRIGGERS): nothing to store
            return Applied(person_id=person_id)
        facts = history.facts(str(new_id), state, self.rules)
        trigger = eligibility.trigger_for(trigger_event, facts, event_time=ev.event_time)
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
        loaded: Any = row if row["history_of"] is not None else None
        if not row["inserted"]:
            # Events already stored (a redelivered one counts once: fold dedupes by event id).
            state = history.fold(facility, visit_number, [*map(event_from_body, row["bodies"]), ev])
            if state is None:  # unreachable: ev folds alone (above), so it folds with the others
                return Applied(person_id=person_id, encounter_id=encounter_id)
            facts = history.facts(str(encounter_id), state, self.rules)
            trigger = eligibility.trigger_for(trigger_event, facts, event_time=ev.event_time)
            params = _encounter_params(encounter_id, state, facts)
            if trigger is None:
                await db.execute(_SAVE_ENCOUNTER, params)
            else:
                since = trigger.at - self.rules.longest_lookback()
                loaded = await db.one(
                    _SAVE_ENCOUNTER_AND_LOAD_HISTORY,
                    {**params, "p": person_id, "active": list(ACTIVE), "since": since},
                )
        if trigger is None:
            return Applied(person_id=person_id, encounter_id=encounter_id)
        # The statement read the person's encounters as they were before it: this one is
        # added (or replaced) here when it is the person's, and within the window.
        person_history = await self._history(db, person_id, since, loaded)
        if row["person_id"] == person_id:
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
        now: dt.datetime, *, actor: str,
    ) -> None:
        """A40 (merge patient identifier list): the prior MRN's history moves to the survivor."""
        prior = await db.row("SELECT person_id, merged_into FROM identity WHERE key = :k", {"k": prior_key})
        if prior is None or prior["merged_into"] == survivor_key:
            return  # never seen (nothing to move) or already merged: a redelivered A40
        await db.execute("UPDATE identity SET merged_into = :s WHERE key = :k", {"s": survivor_key, "k": prior_key})
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('merge', :a, :b, :who, 'A40')",
            {"a": prior_key, "b": survivor_key, "who": actor},
        )
        # Encounters keep their (facility, visit number) key, so moving them can never double count.
        await db.execute(
            "UPDATE encounter SET identity_key = :s, person_id = :p WHERE identity_key = :k",
            {"s": survivor_key, "p": survivor_person, "k": prior_key},
        )
        await db.execute(
            "UPDATE patient_flag SET identity_key = :s, person_id = :p WHERE identity_key = :k",
            {"s": survivor_key, "p": survivor_person, "k": prior_key},
        )
        if prior["person_id"] != survivor_person:
            remaining = await db.scalar(
                "SELECT count(*) FROM identity WHERE person_id = :p AND merged_into IS NULL AND key <> :k",
                {"p": prior["person_id"], "k": prior_key},
            )
            await db.execute(
                "UPDATE identity SET person_id = :s WHERE key = :k", {"s": survivor_person, "k": prior_key}
            )
            if not remaining:
                await self._move_candidates(db, prior["person_id"], survivor_person, now, actor=actor)

    async def _merge_persons(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, *, actor: str, reason: str
    ) -> None:
        for table in ("identity", "encounter", "patient_flag"):
            await db.execute(
                f"UPDATE {table} SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
            )
        await self._move_candidates(db, from_person, into_person, dt.datetime.now(dt.UTC), actor=actor)
        mc = await db.scalar("SELECT medi_cal_id FROM person WHERE id = :f", {"f": from_person})
        if mc is not None:
            await db.execute("UPDATE person SET medi_cal_id = NULL WHERE id = :f", {"f": from_person})
            await db.execute(
                "UPDATE person SET medi_cal_id = COALESCE(medi_cal_id, :m) WHERE id = :i", {"m": mc, "i": into_person}
            )

    async def _move_candidates(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, now: dt.datetime, *, actor: str
    ) -> None:
        """One active candidate per person survives a merge: the survivor's; the other is withdrawn."""
        survivor_has = await db.scalar(
            "SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)", {"p": into_person, "a": list(ACTIVE)}
        )
        if survivor_has is not None:
            moving = await db.scalar(
                "SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)",
                {"p": from_person, "a": list(ACTIVE)},
            )
            if moving is not None:
                await self._transition(db, moving, "withdraw", actor="system", reason="identities merged", now=now)
        await db.execute(
            "UPDATE candidate SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
        )

    async def link(self, conn: Conn, key_a: str, key_b: str, *, actor: str, reason: str) -> uuid.UUID:
        """Link two identities as one person (the care team's decision, with who and why)."""
        db = await Sql.of(conn)
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
        return result

    async def unlink(self, conn: Conn, key: str, *, actor: str, reason: str) -> uuid.UUID:
        """Split one identity (with its encounters and flags) off its person, into a new person."""
        db = await Sql.of(conn)
        person = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person is None:
            raise LookupError("unknown identity")
        await self._lock_person(db, person)
        new_person = uuid.uuid4()
        await db.execute("INSERT INTO person (id) VALUES (:p)", {"p": new_person})
        # The identity takes with it the MRNs merged into it (A40), its encounters and its flags.
        await db.execute(
            "UPDATE identity SET person_id = :n WHERE key = :k OR merged_into = :k", {"n": new_person, "k": key}
        )
        await db.execute("UPDATE encounter SET person_id = :n WHERE identity_key = :k", {"n": new_person, "k": key})
        await db.execute(
            "UPDATE patient_flag SET person_id = :n WHERE identity_key = :k", {"n": new_person, "k": key}
        )
        await db.execute(
            "INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('unlink', :a, :a, :w, :r)",
            {"a": key, "w": actor, "r": reason},
        )
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
        """Record a partner system's fact and evaluate SUD-ENS (and the others) on it."""
        db = await Sql.of(conn)
        person_id = await db.scalar("SELECT person_id FROM identity WHERE key = :k", {"k": key})
        if person_id is None:
            raise LookupError("unknown identity")
        await self._lock_person(db, person_id)
        await db.execute(
            "INSERT INTO patient_flag (id, person_id, identity_key, kind, source, effective, until, detail, "
            "recorded_by) VALUES (:id, :p, :k, :kind, :src, :eff, :until, :detail, :by)",
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
            },
        )
        trigger = eligibility.flag_trigger(flag, now)
        return await self._decide(db, person_id, trigger, now, None, None)

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

    async def _create_candidate(
        self, db: Sql, person_id: uuid.UUID, trigger: Trigger, evaluation: Evaluation, now: dt.datetime
    ) -> tuple[uuid.UUID | None, str | None]:
        program = evaluation.proposed
        assert program is not None
        encounter = trigger.encounter
        if encounter is not None:
            # One episode per stay: an A08 or the discharge re-check after a decline proposes nothing new.
            seen = await db.scalar(
                "SELECT 1 FROM candidate WHERE person_id = :p AND program = :prog AND encounter_id = :e",
                {"p": person_id, "prog": program, "e": uuid.UUID(encounter.id)},
            )
            if seen is not None:
                return None, None
        decision = next(d for d in evaluation.decisions if d.program == program)
        body = {
            "reason": evaluation.reason,
            "criteria": [_flat(c) for c in decision.criteria],
            "trigger": trigger.kind,
        }
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
            "o AS (INSERT INTO outbox (service, topic, key, payload, event_id) SELECT CAST(:service AS text), "
            "CAST(:topic AS text), CAST(:key AS text), CAST(:payload AS bytea), CAST(:te AS uuid) FROM c) "
            "SELECT id FROM c",
            {
                "id": candidate_id,
                "p": person_id,
                "prog": program,
                "f": encounter.facility if encounter else "",
                "e": uuid.UUID(encounter.id) if encounter else None,
                "rv": evaluation.rule_version,
                "d": json.dumps(body, default=_json_default),
                "now": now,
                "te": queued.event_id,
                "service": self.outbox.service,
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
            "o AS (INSERT INTO outbox (service, topic, key, payload, event_id) "
            "VALUES (:service, :ttopic, :key, :tpayload, :te), (:service, :ctopic, :key, :cpayload, :ce)) "
            "UPDATE candidate SET status = 'pending', proposed_at = :now, expires_at = :x, updated_at = :now "
            "WHERE id = :c",
            {
                "c": candidate.candidate_id,
                "now": pending.at,
                "x": candidate.expires_at,
                "te": pending.event_id,
                "service": self.outbox.service,
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
        self, db: Sql, candidate_id: uuid.UUID, action: str, *, actor: str, reason: str | None, now: dt.datetime
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
        if row["status"] in HOLDS_SLOT and target not in HOLDS_SLOT:
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
            "INSERT INTO outbox (service, topic, key, payload, event_id) VALUES (:service, :topic, :key, :payload, :e)",
            {"c": candidate_id, "f": from_status, "t": to_status, "a": actor, "r": reason, "at": now,
             "e": event.event_id, "service": self.outbox.service, "topic": self.topics.events, "key": str(person_id),
             "payload": event.model_dump_json().encode()},
        )
        metrics.TRANSITIONS.labels(program=program, to_status=to_status).inc()


def identity_key(authority: str, value: str) -> str:
    """The key of an identity as the listener computes it (`adt_listener.normalize.patient_key`)."""
    return patient_key(authority, value)
