"""The enrollment service's use cases: apply an ADT event, add a flag, link and unlink
identities, act on a candidate, expire what nobody acted on, decide a person again.

Each loads what it needs, calls the pure rules (`history.fold`, `eligibility.evaluate`,
`decide.plan`, `status.next_status`, the slot rules of `slots` and the merge rules of
`merges`) and saves through the repositories: `Persons` (identities, merges, links, the
reads deciding needs) and `Candidates` (proposals, status changes, slots, outbox rows).
The care team's API calls the use cases at the end of the class for its reads; it checks
roles and writes audit rows itself. The ADT path's own statements, tuned for the hot
path, are here.

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
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from enrollment_svc import card, decide, eligibility, findings, history
from enrollment_svc.candidates import Candidates, Topics
from enrollment_svc.model import (
    EncounterEvent,
    EncounterFacts,
    EncounterState,
    Evaluation,
    Flag,
    PersonHistory,
    Trigger,
)
from enrollment_svc.persons import Persons
from enrollment_svc.rows import (
    HISTORY_COLUMNS,
    SAVE_ENCOUNTER,
    encounter_params,
    event_body,
    event_from_body,
)
from enrollment_svc.rules import Rules
from enrollment_svc.sql import Sql
from enrollment_svc.status import ACTIVE
from schemas.adt_event import AdtEventV1, Identifier, patient_key
from services.outbox import Outbox

# Topics and event_from_body are imported from here by the service and `wpc replay`.
__all__ = ["Applied", "EnrollmentStore", "Timeline", "Topics", "event_from_body", "identity_key"]

log = logging.getLogger(__name__)

_MERGE_TRIGGERS = history.MERGE_TRIGGERS  # A18 (with MRG), A34, A40, A47: MRG-1 → PID-3

_TOPICS = Topics()

# A caller's SQLAlchemy connection (API, replay, tests) or the handler's driver connection.
Conn = AsyncConnection | Sql


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


@dataclasses.dataclass(frozen=True)
class Timeline:
    """One person's record as the care team reads it, newest first: rows as JSON-ready values."""

    encounters: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    candidates: list[dict[str, Any]]


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
    "events_through = GREATEST(events_through, CAST(:et AS timestamptz)), updated_at = now(), "
    # The person card (name, phone, address: migration 0009) keeps each key as the newest event
    # stating it said it; an older event only fills keys no newer one stated. Whereabouts are
    # the newest event's with a visit. Both ride on this UPDATE: no statement more per event.
    "card = CASE WHEN :t >= COALESCE(card_at, '-infinity') THEN card || CAST(CAST(:card AS text) AS jsonb) "
    "ELSE CAST(CAST(:card AS text) AS jsonb) || card END, "
    "card_at = CASE WHEN CAST(:card AS text) = '{}' THEN card_at ELSE GREATEST(card_at, :t) END, "
    "whereabouts = CASE WHEN CAST(:wh AS text) IS NULL OR :t < whereabouts_at THEN whereabouts "
    "ELSE CAST(CAST(:wh AS text) AS jsonb) END, "
    "whereabouts_at = CASE WHEN CAST(:wh AS text) IS NULL OR :t < whereabouts_at THEN whereabouts_at ELSE :t END"
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
UPDATE_PERSON = _UPDATE_PERSON  # one event's person facts, run per event by the bulk path too (bulk.py)

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
    f"END AS bodies, hist.* FROM enc LEFT JOIN LATERAL (SELECT h.id AS history_of, {HISTORY_COLUMNS} "
    "FROM person h WHERE h.id = :p AND enc.inserted AND :want) AS hist ON true"
)

# The same update, and the person's window of history as it was before it.
_SAVE_ENCOUNTER_AND_LOAD_HISTORY = (
    f"WITH s AS ({SAVE_ENCOUNTER}) SELECT {HISTORY_COLUMNS} FROM person h WHERE h.id = :p"
)


class EnrollmentStore:
    """The enrollment service's unit of work, over one connection the caller opened.

    Every method runs inside the caller's transaction: an SQLAlchemy `AsyncConnection`
    (``engine.begin()``) or the handler's `Sql` on a driver connection it began itself.
    """

    def __init__(self, rules: Rules, topics: Topics = _TOPICS, outbox: Outbox | None = None) -> None:
        self.rules = rules
        self.topics = topics
        self.candidates = Candidates(rules, topics, outbox)
        self.outbox = self.candidates.outbox  # the service's (`services.outbox`), checked by `Candidates`
        self.persons = Persons(rules, self.candidates)

    # --- setup ----------------------------------------------------------------------------

    async def sync_capacity(self, conn: Conn) -> None:
        """Make ``program_capacity`` say what the rules say (run at start, in a transaction)."""
        await self.candidates.sync_capacity(await Sql.of(conn))

    # --- ADT input ------------------------------------------------------------------------

    async def apply_adt_event(self, conn: Conn, event: AdtEventV1, now: dt.datetime) -> Applied:
        """Apply one `adt.events` record, inside the caller's transaction. Idempotent by event id."""
        db = await Sql.of(conn)
        key, first, authority = identity_of(event)
        usable = event.processing_id == "P" and first is not None
        zone = self.rules.site.zone()
        ev = history.encounter_event(event, zone)
        stated_at = stated_time(event, zone)
        person = {**self.person_params(event), "t": stated_at, "et": ev.event_time if ev is not None else None}
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
            person_id, regroup = await self.persons.resolve(db, key, first, authority, event.patient.medi_cal_id, known)
            if event.trigger_event in _MERGE_TRIGGERS:
                for prior in event.prior_identifiers:
                    prior_authority = prior.assigning_authority or event.sending_facility
                    prior_key = patient_key(prior_authority, prior.value)
                    if prior_key != key:
                        regroup |= await self.persons.merge_identity(db, prior_key, key, person_id, now,
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

    def person_params(self, event: AdtEventV1) -> dict[str, Any]:
        """The person-level facts an event states (`_PERSON_FACTS`), but for their times."""
        return {
            "b": event.patient.birth_date,
            "mc": eligibility.is_medi_cal(event, self.rules),
            "cr": eligibility.county_resident(event, self.rules),
            "pc": json.dumps([p.model_dump(mode="json") for p in event.primary_care]),
            "card": json.dumps(card.stated(event)),
            "wh": card.whereabouts(event),
        }

    async def _clock_finding(self, db: Sql, event: AdtEventV1, key: str, stated_at: dt.datetime | None) -> None:
        """Count an event time further ahead of receipt than the margin (a sender's clock or time
        zone is wrong); the event itself is used as it is."""
        received_at = history.to_utc(event.received_at, self.rules.site.zone())
        assert received_at is not None  # a required field of adt.events
        margin = dt.timedelta(minutes=self.rules.site.clock_ahead_margin_minutes)
        if findings.clock_ahead(stated_at, received_at, margin):
            await findings.count(db, event.sending_facility, findings.CLOCK_AHEAD, key, received_at)

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
                **encounter_params(new_id, state, facts),
                "f": facility,
                "v": visit_number,
                "k": key,
                "p": person_id,
                "e": uuid.UUID(ev.event_id),
                "tr": ev.trigger,
                "et": ev.event_time,
                "body": event_body(ev),
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
            params = encounter_params(encounter_id, state, facts)
            if trigger is None:
                await db.execute(SAVE_ENCOUNTER, params)
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
        return await self.decide_in_order(db, person_id, trigger, now, encounter_id, facts, loaded)

    async def decide_in_order(
        self,
        db: Sql,
        person_id: uuid.UUID,
        trigger: Trigger,
        now: dt.datetime,
        encounter_id: uuid.UUID,
        facts: EncounterFacts,
        loaded: Any,
    ) -> Applied:
        """Decide an in-order event's own trigger, its encounter (``facts``) as just saved.

        ``loaded``: the person's window of history (`rows.history_columns` from
        ``trigger.at`` − the longest lookback), read in this transaction before or after the
        encounter was saved, or None to read it now; the encounter is put in (or replaced)
        here, when within the window."""
        since = trigger.at - self.rules.longest_lookback()
        person_history = await self.persons.history(db, person_id, since, loaded)
        others = tuple(e for e in person_history.encounters if e.id != facts.id)
        mine = (facts,) if facts.start >= since else ()
        encounters = tuple(sorted((*others, *mine), key=lambda e: e.start))
        person_history = dataclasses.replace(person_history, encounters=encounters)
        return await self._decide(db, person_id, trigger, now, encounter_id, person_history)

    async def save_encounter(
        self, conn: Conn, encounter_id: uuid.UUID, state: EncounterState, facts: EncounterFacts
    ) -> None:
        db = await Sql.of(conn)
        await db.execute(SAVE_ENCOUNTER, encounter_params(encounter_id, state, facts))

    # --- identities -----------------------------------------------------------------------

    async def link(
        self, conn: Conn, key_a: str, key_b: str, *, actor: str, reason: str, now: dt.datetime | None = None
    ) -> uuid.UUID:
        """Link two identities as one person (the care team's decision, with who and why); the
        person's current triggers are decided again on the joined history."""
        db = await Sql.of(conn)
        person, merged = await self.persons.link(db, key_a, key_b, actor=actor, reason=reason)
        if merged:
            await self._redecide(db, person, now or dt.datetime.now(dt.UTC))
        return person

    async def unlink(
        self, conn: Conn, key: str, *, actor: str, reason: str, now: dt.datetime | None = None
    ) -> uuid.UUID:
        """Split one identity (with its encounters and flags) off its person, into a new person;
        both are decided again (a candidate made on the other's history may not stand)."""
        db = await Sql.of(conn)
        now = now or dt.datetime.now(dt.UTC)
        person, new_person = await self.persons.split(db, key, actor=actor, reason=reason)
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
        person_id = await self.persons.add_flag(db, key, flag, recorded_by=recorded_by, now=now)
        return await self._redecide(db, person_id, now)

    # --- deciding -------------------------------------------------------------------------

    async def load_history(self, conn: Conn, person_id: uuid.UUID, at: dt.datetime) -> PersonHistory:
        db = await Sql.of(conn)
        return await self.persons.history(db, person_id, at - self.rules.longest_lookback(), None)

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
            person_history = await self.persons.history(db, person_id, trigger.at - self.rules.longest_lookback(), None)
        evaluation = eligibility.evaluate(person_history, trigger, self.rules, now)
        if evaluation.proposed is None:
            return Applied(person_id=person_id, encounter_id=encounter_id, evaluation=evaluation)
        candidate_id, status = await self.candidates.create(db, person_id, trigger, evaluation, now)
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
        record = await self.persons.record(db, person_id, now)
        triggers = decide.current_triggers(record, self.rules, now)
        if not triggers:
            return Applied(person_id=person_id, encounter_id=encounter_id)
        missing = decide.unfold_needed(record, triggers)
        if missing:
            record = await self.persons.unfold(db, record, missing)
        plan = decide.plan(record, self.rules, now, triggers)
        candidate_id: uuid.UUID | None = None
        status: str | None = None
        freed: str | None = None
        if plan.withdraw is not None:
            # The slot it held goes to the candidate that replaces it, else to the queue (below).
            await self.candidates.transition(db, uuid.UUID(plan.withdraw), "withdraw", actor="system",
                                   reason=decide.SUPERSEDED, now=now, refill=False)
            freed = next(c.program for c in record.candidates if c.id == plan.withdraw)
        if plan.create is not None:
            candidate_id, status = await self.candidates.create(
                db, person_id, plan.create.trigger, plan.create.evaluation, now
            )
        if freed is not None:
            await self.candidates.fill_slot(db, freed, now)
        if plan.revise is not None and plan.proposal is not None:
            await self.candidates.revise(db, uuid.UUID(plan.revise), plan.proposal, now)
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
        return await self.candidates.transition(db, candidate_id, action, actor=actor, reason=reason, now=now)

    async def expire_due(self, conn: Conn, now: dt.datetime, *, limit: int = 100) -> int:
        """Expire pending candidates nobody acted on (one batch; the service calls it periodically)."""
        return await self.candidates.expire_due(await Sql.of(conn), now, limit=limit)

    async def record_service(
        self, conn: Conn, candidate_id: uuid.UUID, kind: str, *, at: dt.datetime, actor: str
    ) -> None:
        """A service delivered to a candidate (pre-discharge visit, home visit, PCP appointment)."""
        await self.candidates.record_service(await Sql.of(conn), candidate_id, kind, at, actor)

    # --- the care team's reads (the API checks roles and writes the audit row) ------------

    async def list_candidates(
        self, conn: Conn, programs: list[str], *, status: str | None, facility: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self.candidates.listing(await Sql.of(conn), programs, status, facility, limit)

    async def candidate(self, conn: Conn, candidate_id: uuid.UUID) -> dict[str, Any] | None:
        return await self.candidates.shown(await Sql.of(conn), candidate_id)

    async def candidate_trail(
        self, conn: Conn, candidate_id: uuid.UUID, person_id: uuid.UUID
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A candidate's person's identifiers, and the candidate's status changes."""
        db = await Sql.of(conn)
        return await self.persons.identifiers(db, person_id), await self.candidates.transitions(db, candidate_id)

    async def person_programs(self, conn: Conn, person_id: uuid.UUID) -> set[str]:
        """The programs whose care teams may read the person (it was their candidate)."""
        return await self.candidates.programs_of(await Sql.of(conn), person_id)

    async def timeline(self, conn: Conn, person_id: uuid.UUID) -> Timeline:
        db = await Sql.of(conn)
        return Timeline(
            encounters=await self.persons.encounters(db, person_id),
            flags=await self.persons.flags(db, person_id),
            candidates=await self.candidates.of_person(db, person_id),
        )

    async def feed_findings(self, conn: Conn, facility: str | None) -> list[dict[str, Any]]:
        """Feed-quality findings per facility and kind (`enrollment_svc.findings`)."""
        return await findings.report(await Sql.of(conn), facility)


def identity_of(event: AdtEventV1) -> tuple[str, Identifier | None, str]:
    """An event's identity key, its first PID-3 identifier (None: none sent) and that one's authority."""
    first = event.patient.identifiers[0] if event.patient.identifiers else None
    authority = (first.assigning_authority if first else None) or event.sending_facility
    key = event.patient.patient_key or (patient_key(authority, first.value) if first else "")
    return key, first, authority


def stated_time(event: AdtEventV1, zone: ZoneInfo) -> dt.datetime | None:
    """When an event states its person-level facts: its event time, else its message time, else receipt."""
    return history.to_utc(event.event_time or event.message_time, zone) or history.to_utc(event.received_at, zone)


def identity_key(authority: str, value: str) -> str:
    """The key of an identity as the listener computes it (`adt_listener.normalize.patient_key`)."""
    return patient_key(authority, value)
