"""PostgreSQL side of the enrollment service: identities, encounters, flags, candidates.

Every change of state happens in one transaction together with its outbox rows
(`enrollment.candidates`, `enrollment.events`) and, for Kafka input, the
``processed_event`` row that makes redelivery a no-op. The relay publishes the outbox
(services/outbox.py), so a crash at any point either loses nothing or repeats nothing.

Concurrency: two service instances may see events of one person at once (a person
spans several hospitals, hence several Kafka keys). Each transaction takes a
transaction-scoped advisory lock per person before it reads history or decides, and
the partial unique index ``candidate_one_active_uq`` makes "one candidate per person"
hold even so. Program capacity is counted under a row lock on ``program_capacity``.

Cost per event does not grow with the table: every read is by primary key, by
(facility, visit number), or by (person, start time) inside the rules' longest window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from adt_listener.normalize import patient_key
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
from enrollment_svc.status import ACTIVE, HOLDS_SLOT, next_status
from schemas.adt_event import AdtEventV1, Identifier, Provider
from schemas.enrollment import (
    CriterionV1,
    EncounterRef,
    EnrollmentCandidateV1,
    EnrollmentEventV1,
    candidate_event_id,
    transition_event_id,
)

__all__ = ["Applied", "EnrollmentStore", "Topics"]

_MERGE_TRIGGERS = frozenset({"A34", "A40", "A47"})  # chapter 3.3.34/3.3.40/3.3.47: MRG-1 → PID-3


@dataclasses.dataclass(frozen=True)
class Topics:
    candidates: str = "enrollment.candidates"
    events: str = "enrollment.events"


@dataclasses.dataclass(frozen=True)
class Applied:
    """What one input did: for logs, metrics and tests (ids only, no PHI)."""

    duplicate: bool = False
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


def _event_body(ev: EncounterEvent) -> str:
    return json.dumps(dataclasses.asdict(ev), default=_json_default)


def event_from_body(body: dict[str, Any]) -> EncounterEvent:
    times = ("event_time", "received_at", "admit_time", "discharge_time")
    values: dict[str, Any] = {
        k: (dt.datetime.fromisoformat(v) if k in times and v is not None else v) for k, v in body.items()
    }
    values["diagnoses"] = tuple(values.get("diagnoses", ()))
    return EncounterEvent(**values)


class EnrollmentStore:
    """The enrollment service's unit of work, over one connection the caller opened."""

    def __init__(self, rules: Rules, topics: Topics = Topics()) -> None:
        self.rules = rules
        self.topics = topics

    # --- setup ----------------------------------------------------------------------------

    async def sync_capacity(self, conn: AsyncConnection) -> None:
        """Make ``program_capacity`` say what the rules say (run at start, in a transaction)."""
        for program, spec in self.rules.programs.items():
            await conn.execute(
                text(
                    "INSERT INTO program_capacity (program, capacity) VALUES (:p, :c) "
                    "ON CONFLICT (program) DO UPDATE SET capacity = EXCLUDED.capacity"
                ),
                {"p": program, "c": spec.capacity},
            )

    # --- ADT input ------------------------------------------------------------------------

    async def apply_adt_event(self, conn: AsyncConnection, event: AdtEventV1, now: dt.datetime) -> Applied:
        """Apply one `adt.events` record, inside the caller's transaction. Idempotent by event id."""
        first = event.patient.identifiers[0] if event.patient.identifiers else None
        authority = (first.assigning_authority if first else None) or event.sending_facility
        key = event.patient.patient_key or (patient_key(authority, first.value) if first else "")
        # One round trip: mark the event processed and read its identity (most events are of known patients).
        marked = (
            await conn.execute(
                text(
                    "WITH p AS (INSERT INTO processed_event (event_id) VALUES (:e) ON CONFLICT DO NOTHING "
                    "RETURNING event_id) SELECT EXISTS (SELECT 1 FROM p) AS fresh, i.person_id, i.merged_into "
                    "FROM (SELECT 1) AS one LEFT JOIN identity i ON i.key = :k"
                ),
                {"e": event.event_id, "k": key},
            )
        ).one()
        if not marked.fresh:
            return Applied(duplicate=True)
        if event.processing_id != "P" or first is None:
            return Applied()  # training / debugging messages (MSH-11 T, D) build no history
        known = marked if marked.person_id is not None else None
        person_id = await self._resolve(conn, key, first, authority, event.patient.medi_cal_id, known)
        if event.trigger_event in _MERGE_TRIGGERS:
            for prior in event.prior_identifiers:
                prior_key = patient_key(prior.assigning_authority or event.sending_facility, prior.value)
                if prior_key != key:
                    await self._merge_identity(conn, prior_key, key, person_id, now, actor="adt:" + event.trigger_event)
        await self._update_person(conn, person_id, event)

        ev = history.encounter_event(event, self.rules.site.zone())
        if ev is None or event.visit is None or event.visit.visit_number is None:
            return Applied(person_id=person_id)
        encounter_id, facts = await self._apply_encounter_event(
            conn, event.sending_facility, event.visit.visit_number, key, person_id, ev
        )
        trigger = eligibility.trigger_for(event.trigger_event, facts, event_time=ev.event_time)
        if trigger is None:
            return Applied(person_id=person_id, encounter_id=encounter_id)
        return await self._decide(conn, person_id, trigger, now, encounter_id)

    async def _resolve(
        self,
        conn: AsyncConnection,
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
        while row is not None and row.merged_into is not None and row.merged_into not in seen:
            seen.add(row.merged_into)  # an A40-merged MRN: history lives with the survivor
            row = (
                await conn.execute(
                    text("SELECT person_id, merged_into FROM identity WHERE key = :k"), {"k": row.merged_into}
                )
            ).first()
        by_medi_cal: uuid.UUID | None = None
        if medi_cal_id:
            by_medi_cal = await conn.scalar(text("SELECT id FROM person WHERE medi_cal_id = :m"), {"m": medi_cal_id})
        if row is not None:
            person_id: uuid.UUID = row.person_id
            if by_medi_cal is not None and by_medi_cal != person_id:
                # The same Medi-Cal id at two hospitals: one person (programs.md, identity across hospitals).
                await self._merge_persons(conn, person_id, by_medi_cal, actor="medi-cal-id", reason="same Medi-Cal id")
                person_id = by_medi_cal
            elif by_medi_cal is None and medi_cal_id:
                await conn.execute(
                    text("UPDATE person SET medi_cal_id = :m WHERE id = :p AND medi_cal_id IS NULL"),
                    {"m": medi_cal_id, "p": person_id},
                )
            return person_id
        person_id = by_medi_cal or uuid.uuid4()
        if by_medi_cal is None:
            await conn.execute(
                text("INSERT INTO person (id, medi_cal_id) VALUES (:p, :m)"), {"p": person_id, "m": medi_cal_id}
            )
        await conn.execute(
            text(
                "INSERT INTO identity (key, person_id, authority, value, type_code) VALUES (:k, :p, :a, :v, :t)"
            ),
            {"k": key, "p": person_id, "a": authority, "v": ident.value, "t": ident.type_code},
        )
        return person_id

    async def _update_person(self, conn: AsyncConnection, person_id: uuid.UUID, event: AdtEventV1) -> None:
        patient = event.patient
        primary_care = json.dumps([p.model_dump(mode="json") for p in event.primary_care])
        await conn.execute(
            text(
                "UPDATE person SET birth_date = COALESCE(:b, birth_date), medi_cal = COALESCE(:mc, medi_cal), "
                "county_resident = COALESCE(:cr, county_resident), "
                "primary_care = CASE WHEN :pc = '[]' THEN primary_care ELSE CAST(:pc AS jsonb) END, "
                "updated_at = now() WHERE id = :p"
            ),
            {
                "b": patient.birth_date,
                "mc": eligibility.is_medi_cal(event, self.rules),
                "cr": eligibility.county_resident(event, self.rules),
                "pc": primary_care,
                "p": person_id,
            },
        )

    async def _lock_person(self, conn: AsyncConnection, person_id: uuid.UUID) -> None:
        """Serialize deciding for one person: the person row's lock, held until commit (the
        UPDATE in `_update_person` takes the same lock for ADT events)."""
        await conn.execute(text("SELECT 1 FROM person WHERE id = :p FOR UPDATE"), {"p": person_id})

    async def _apply_encounter_event(
        self,
        conn: AsyncConnection,
        facility: str,
        visit_number: str,
        key: str,
        person_id: uuid.UUID,
        ev: EncounterEvent,
    ) -> tuple[uuid.UUID, EncounterFacts]:
        # The person row is locked already (`_update_person`); the upsert locks the encounter row.
        first = history.fold(facility, visit_number, [ev])
        assert first is not None
        encounter_id: uuid.UUID = await conn.scalar(
            text(
                "INSERT INTO encounter (id, facility, visit_number, identity_key, person_id, kind, status, "
                "start_at, last_event_time) VALUES (:id, :f, :v, :k, :p, 'other', :s, :st, :t) "
                "ON CONFLICT ON CONSTRAINT encounter_visit_uq DO UPDATE SET updated_at = now() RETURNING id"
            ),
            {
                "id": uuid.uuid4(),
                "f": facility,
                "v": visit_number,
                "k": key,
                "p": person_id,
                "s": first.status,
                "st": first.start,
                "t": first.last_event_time,
            },
        )
        # The new event and the stored ones in one round trip (a CTE's insert is not visible to
        # the statement's own read of the table, hence the UNION ALL).
        bodies = (
            await conn.execute(
                text(
                    "WITH ins AS (INSERT INTO encounter_event (event_id, encounter_id, trigger_event, event_time, "
                    "body) VALUES (:e, :enc, :tr, :t, CAST(:b AS jsonb)) ON CONFLICT DO NOTHING RETURNING body) "
                    "SELECT body FROM encounter_event WHERE encounter_id = :enc UNION ALL SELECT body FROM ins"
                ),
            {
                "e": uuid.UUID(ev.event_id),
                "enc": encounter_id,
                "tr": ev.trigger,
                "t": ev.event_time,
                "b": _event_body(ev),
            },
            )
        ).scalars()
        state = history.fold(facility, visit_number, [event_from_body(b) for b in bodies])
        assert state is not None
        facts = history.facts(str(encounter_id), state, self.rules)
        await self.save_encounter(conn, encounter_id, state, facts)
        return encounter_id, facts

    async def save_encounter(
        self, conn: AsyncConnection, encounter_id: uuid.UUID, state: EncounterState, facts: EncounterFacts
    ) -> None:
        await conn.execute(
            text(
                "UPDATE encounter SET kind = :kind, status = :status, patient_class = :pc, hospital_service = :hs, "
                "start_at = :start, end_at = :end, dx_flags = :flags, diagnoses = :dx, "
                "last_event_time = :t, updated_at = now() WHERE id = :id"
            ),
            {
                "kind": facts.kind,
                "status": state.status,
                "pc": state.patient_class,
                "hs": state.hospital_service,
                "start": state.start,
                "end": state.end,
                "flags": sorted(facts.dx_flags),
                "dx": sorted(state.diagnoses),
                "t": state.last_event_time,
                "id": encounter_id,
            },
        )

    # --- identities -----------------------------------------------------------------------

    async def _merge_identity(
        self, conn: AsyncConnection, prior_key: str, survivor_key: str, survivor_person: uuid.UUID,
        now: dt.datetime, *, actor: str,
    ) -> None:
        """A40 (merge patient identifier list): the prior MRN's history moves to the survivor."""
        prior = (
            await conn.execute(text("SELECT person_id, merged_into FROM identity WHERE key = :k"), {"k": prior_key})
        ).first()
        if prior is None or prior.merged_into == survivor_key:
            return  # never seen (nothing to move) or already merged: a redelivered A40
        await conn.execute(
            text("UPDATE identity SET merged_into = :s WHERE key = :k"), {"s": survivor_key, "k": prior_key}
        )
        await conn.execute(
            text(
                "INSERT INTO identity_link (action, key_a, key_b, actor, reason) "
                "VALUES ('merge', :a, :b, :who, 'A40')"
            ),
            {"a": prior_key, "b": survivor_key, "who": actor},
        )
        # Encounters keep their (facility, visit number) key, so moving them can never double count.
        await conn.execute(
            text("UPDATE encounter SET identity_key = :s, person_id = :p WHERE identity_key = :k"),
            {"s": survivor_key, "p": survivor_person, "k": prior_key},
        )
        await conn.execute(
            text("UPDATE patient_flag SET identity_key = :s, person_id = :p WHERE identity_key = :k"),
            {"s": survivor_key, "p": survivor_person, "k": prior_key},
        )
        if prior.person_id != survivor_person:
            remaining = await conn.scalar(
                text("SELECT count(*) FROM identity WHERE person_id = :p AND merged_into IS NULL AND key <> :k"),
                {"p": prior.person_id, "k": prior_key},
            )
            await conn.execute(
                text("UPDATE identity SET person_id = :s WHERE key = :k"), {"s": survivor_person, "k": prior_key}
            )
            if not remaining:
                await self._move_candidates(conn, prior.person_id, survivor_person, now, actor=actor)

    async def _merge_persons(
        self, conn: AsyncConnection, from_person: uuid.UUID, into_person: uuid.UUID, *, actor: str, reason: str
    ) -> None:
        for table in ("identity", "encounter", "patient_flag"):
            await conn.execute(
                text(f"UPDATE {table} SET person_id = :i WHERE person_id = :f"),
                {"i": into_person, "f": from_person},
            )
        await self._move_candidates(conn, from_person, into_person, dt.datetime.now(dt.UTC), actor=actor)
        mc = await conn.scalar(text("SELECT medi_cal_id FROM person WHERE id = :f"), {"f": from_person})
        if mc is not None:
            await conn.execute(text("UPDATE person SET medi_cal_id = NULL WHERE id = :f"), {"f": from_person})
            await conn.execute(
                text("UPDATE person SET medi_cal_id = COALESCE(medi_cal_id, :m) WHERE id = :i"),
                {"m": mc, "i": into_person},
            )

    async def _move_candidates(
        self, conn: AsyncConnection, from_person: uuid.UUID, into_person: uuid.UUID, now: dt.datetime, *, actor: str
    ) -> None:
        """One active candidate per person survives a merge: the survivor's; the other is withdrawn."""
        survivor_has = await conn.scalar(
            text("SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)"),
            {"p": into_person, "a": list(ACTIVE)},
        )
        if survivor_has is not None:
            moving = await conn.scalar(
                text("SELECT id FROM candidate WHERE person_id = :p AND status = ANY(:a)"),
                {"p": from_person, "a": list(ACTIVE)},
            )
            if moving is not None:
                await self.transition(conn, moving, "withdraw", actor="system", reason="identities merged", now=now)
        await conn.execute(
            text("UPDATE candidate SET person_id = :i WHERE person_id = :f"), {"i": into_person, "f": from_person}
        )

    async def link(
        self, conn: AsyncConnection, key_a: str, key_b: str, *, actor: str, reason: str
    ) -> uuid.UUID:
        """Link two identities as one person (the care team's decision, with who and why)."""
        persons = []
        for key in (key_a, key_b):
            person = await conn.scalar(text("SELECT person_id FROM identity WHERE key = :k"), {"k": key})
            if person is None:
                raise LookupError("unknown identity")
            persons.append(person)
        for p in sorted(set(persons), key=str):
            await self._lock_person(conn, p)
        if persons[0] != persons[1]:
            await self._merge_persons(conn, persons[1], persons[0], actor=actor, reason=reason)
        await conn.execute(
            text("INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('link', :a, :b, :w, :r)"),
            {"a": key_a, "b": key_b, "w": actor, "r": reason},
        )
        result: uuid.UUID = persons[0]
        return result

    async def unlink(self, conn: AsyncConnection, key: str, *, actor: str, reason: str) -> uuid.UUID:
        """Split one identity (with its encounters and flags) off its person, into a new person."""
        person = await conn.scalar(text("SELECT person_id FROM identity WHERE key = :k"), {"k": key})
        if person is None:
            raise LookupError("unknown identity")
        await self._lock_person(conn, person)
        new_person = uuid.uuid4()
        await conn.execute(text("INSERT INTO person (id) VALUES (:p)"), {"p": new_person})
        # The identity takes with it the MRNs merged into it (A40), its encounters and its flags.
        await conn.execute(
            text("UPDATE identity SET person_id = :n WHERE key = :k OR merged_into = :k"), {"n": new_person, "k": key}
        )
        await conn.execute(
            text("UPDATE encounter SET person_id = :n WHERE identity_key = :k"), {"n": new_person, "k": key}
        )
        await conn.execute(
            text("UPDATE patient_flag SET person_id = :n WHERE identity_key = :k"), {"n": new_person, "k": key}
        )
        await conn.execute(
            text("INSERT INTO identity_link (action, key_a, key_b, actor, reason) VALUES ('unlink', :a, :a, :w, :r)"),
            {"a": key, "w": actor, "r": reason},
        )
        return new_person

    # --- flags ----------------------------------------------------------------------------

    async def add_flag(
        self,
        conn: AsyncConnection,
        key: str,
        flag: Flag,
        *,
        recorded_by: str,
        now: dt.datetime,
    ) -> Applied:
        """Record a partner system's fact and evaluate SUD-ENS (and the others) on it."""
        person_id = await conn.scalar(text("SELECT person_id FROM identity WHERE key = :k"), {"k": key})
        if person_id is None:
            raise LookupError("unknown identity")
        await self._lock_person(conn, person_id)
        await conn.execute(
            text(
                "INSERT INTO patient_flag (id, person_id, identity_key, kind, source, effective, until, detail, "
                "recorded_by) VALUES (:id, :p, :k, :kind, :src, :eff, :until, :detail, :by)"
            ),
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
        return await self._decide(conn, person_id, trigger, now, None)

    # --- deciding -------------------------------------------------------------------------

    async def load_history(self, conn: AsyncConnection, person_id: uuid.UUID, at: dt.datetime) -> PersonHistory:
        since = at - self.rules.longest_lookback()
        person = (
            await conn.execute(
                text(
                    "SELECT birth_date, medi_cal, county_resident, "
                    "(SELECT program FROM candidate WHERE person_id = :p AND status = ANY(:a) LIMIT 1) AS active, "
                    "EXISTS (SELECT 1 FROM patient_flag WHERE person_id = :p) AS has_flags FROM person WHERE id = :p"
                ),
                {"p": person_id, "a": list(ACTIVE)},
            )
        ).one()
        encounters = tuple(
            EncounterFacts(
                id=str(r.id),
                facility=r.facility,
                visit_number=r.visit_number,
                kind=r.kind,
                status=r.status,
                start=r.start_at,
                end=r.end_at,
                dx_flags=frozenset(r.dx_flags),
            )
            for r in await conn.execute(
                text(
                    "SELECT id, facility, visit_number, kind, status, start_at, end_at, dx_flags FROM encounter "
                    "WHERE person_id = :p AND start_at >= :since ORDER BY start_at"
                ),
                {"p": person_id, "since": since},
            )
        )
        flags: tuple[Flag, ...] = ()
        if person.has_flags:
            flags = tuple(
                Flag(
                    id=str(r.id), kind=r.kind, source=r.source, effective=r.effective, until=r.until, detail=r.detail
                )
                for r in await conn.execute(
                    text(
                        "SELECT id, kind, source, effective, until, detail FROM patient_flag "
                        "WHERE person_id = :p AND (effective >= :since OR until IS NULL OR until >= :since)"
                    ),
                    {"p": person_id, "since": since},
                )
            )
        return PersonHistory(
            person_id=str(person_id),
            birth_date=person.birth_date,
            medi_cal=person.medi_cal,
            county_resident=person.county_resident,
            encounters=encounters,
            flags=flags,
            active_program=person.active,
        )

    async def _decide(
        self,
        conn: AsyncConnection,
        person_id: uuid.UUID,
        trigger: Trigger,
        now: dt.datetime,
        encounter_id: uuid.UUID | None,
    ) -> Applied:
        person_history = await self.load_history(conn, person_id, trigger.at)
        evaluation = eligibility.evaluate(person_history, trigger, self.rules, now)
        if evaluation.proposed is None:
            return Applied(person_id=person_id, encounter_id=encounter_id, evaluation=evaluation)
        candidate_id, status = await self._create_candidate(conn, person_id, trigger, evaluation, now)
        return Applied(
            person_id=person_id,
            encounter_id=encounter_id,
            evaluation=evaluation,
            candidate_id=candidate_id,
            candidate_status=status,
        )

    async def _create_candidate(
        self, conn: AsyncConnection, person_id: uuid.UUID, trigger: Trigger, evaluation: Evaluation, now: dt.datetime
    ) -> tuple[uuid.UUID | None, str | None]:
        program = evaluation.proposed
        assert program is not None
        encounter = trigger.encounter
        if encounter is not None:
            # One episode per stay: an A08 or the discharge re-check after a decline proposes nothing new.
            seen = await conn.scalar(
                text("SELECT 1 FROM candidate WHERE person_id = :p AND program = :prog AND encounter_id = :e"),
                {"p": person_id, "prog": program, "e": uuid.UUID(encounter.id)},
            )
            if seen is not None:
                return None, None
        status = "pending" if await self._slot_free(conn, program) else "queued"
        decision = next(d for d in evaluation.decisions if d.program == program)
        body = {
            "reason": evaluation.reason,
            "criteria": [dataclasses.asdict(c) for c in decision.criteria],
            "trigger": trigger.kind,
        }
        candidate_id = uuid.uuid4()
        inserted = await conn.scalar(
            text(
                "INSERT INTO candidate (id, person_id, program, status, facility, encounter_id, rule_version, "
                "decision, created_at, updated_at) VALUES (:id, :p, :prog, :s, :f, :e, :rv, CAST(:d AS jsonb), "
                ":now, :now) ON CONFLICT (person_id) WHERE status IN ('queued', 'pending', 'accepted', 'enrolled') "
                "DO NOTHING RETURNING id"
            ),
            {
                "id": candidate_id,
                "p": person_id,
                "prog": program,
                "s": "queued",
                "f": encounter.facility if encounter else "",
                "e": uuid.UUID(encounter.id) if encounter else None,
                "rv": evaluation.rule_version,
                "d": json.dumps(body, default=_json_default),
                "now": now,
            },
        )
        if inserted is None:
            return None, None  # another instance proposed one for this person first
        await self._record_transition(
            conn, candidate_id, None, "queued", actor="system", reason=None, now=now, known=(person_id, program, 0)
        )
        if status == "pending":
            await self._propose(conn, candidate_id, now)
        return candidate_id, status

    async def _propose(self, conn: AsyncConnection, candidate_id: uuid.UUID, now: dt.datetime) -> None:
        """queued → pending: the candidate takes a slot and is published to the care team."""
        row = (
            await conn.execute(
                text(
                    "SELECT c.id, c.person_id, c.program, c.encounter_id, c.rule_version, c.decision, "
                    "c.created_at, p.medi_cal_id, p.primary_care, "
                    "(SELECT count(*) FROM candidate_transition t WHERE t.candidate_id = c.id) AS seq "
                    "FROM candidate c JOIN person p ON p.id = c.person_id WHERE c.id = :c"
                ),
                {"c": candidate_id},
            )
        ).one()
        expires = now + dt.timedelta(days=self.rules.programs[row.program].pending_expiry_days)
        await conn.execute(
            text("UPDATE candidate SET status = 'pending', proposed_at = :now, expires_at = :x, updated_at = :now "
                 "WHERE id = :c"),
            {"now": now, "x": expires, "c": candidate_id},
        )
        await self._record_transition(
            conn, candidate_id, "queued", "pending", actor="system", reason=None, now=now,
            known=(row.person_id, row.program, int(row.seq)),
        )
        identifiers = [
            Identifier(value=r.value, assigning_authority=r.authority, type_code=r.type_code)
            for r in await conn.execute(
                text("SELECT value, authority, type_code FROM identity WHERE person_id = :p ORDER BY created_at, key"),
                {"p": row.person_id},
            )
        ]
        trigger = None
        if row.encounter_id is not None:
            enc = (
                await conn.execute(
                    text("SELECT id, facility, visit_number, kind, patient_class, start_at, end_at FROM encounter "
                         "WHERE id = :e"),
                    {"e": row.encounter_id},
                )
            ).one()
            trigger = EncounterRef(
                encounter_id=enc.id,
                facility=enc.facility,
                visit_number=enc.visit_number,
                kind=enc.kind,
                patient_class=enc.patient_class,
                admit_time=enc.start_at,
                discharge_time=enc.end_at,
            )
        event = EnrollmentCandidateV1(
            event_id=candidate_event_id(candidate_id),
            candidate_id=candidate_id,
            program=row.program,
            person_id=row.person_id,
            identifiers=identifiers,
            medi_cal_id=row.medi_cal_id,
            primary_care=[Provider.model_validate(p) for p in row.primary_care],
            trigger=trigger,
            criteria=[CriterionV1.model_validate(c) for c in row.decision["criteria"]],
            reason=row.decision["reason"],
            rule_version=row.rule_version,
            decided_at=row.created_at,
            expires_at=expires,
        )
        await self._outbox(conn, self.topics.candidates, str(row.person_id), event.event_id, event.model_dump_json())

    # --- the care team's actions ----------------------------------------------------------

    async def transition(
        self,
        conn: AsyncConnection,
        candidate_id: uuid.UUID,
        action: str,
        *,
        actor: str,
        reason: str | None,
        now: dt.datetime,
    ) -> str:
        """Apply an action of `enrollment_svc.status`; frees and refills a slot when one is released."""
        row = (
            await conn.execute(
                text("SELECT status, program FROM candidate WHERE id = :c FOR UPDATE"), {"c": candidate_id}
            )
        ).first()
        if row is None:
            raise LookupError("unknown candidate")
        target = next_status(row.status, action, reason)
        if action == "promote":
            await self._propose(conn, candidate_id, now)
            return target
        await conn.execute(
            text("UPDATE candidate SET status = :s, status_reason = :r, updated_at = :now WHERE id = :c"),
            {"s": target, "r": reason, "now": now, "c": candidate_id},
        )
        await self._record_transition(conn, candidate_id, row.status, target, actor=actor, reason=reason, now=now)
        if row.status in HOLDS_SLOT and target not in HOLDS_SLOT:
            await self._fill_slot(conn, row.program, now)
        return target

    async def _slot_free(self, conn: AsyncConnection, program: str) -> bool:
        """Whether the program has a free slot; the capacity row stays locked until commit, so
        two transactions cannot both take the last slot."""
        capacity = await conn.scalar(
            text("SELECT capacity FROM program_capacity WHERE program = :p FOR UPDATE"), {"p": program}
        )
        used = await conn.scalar(
            text("SELECT count(*) FROM candidate WHERE program = :p AND status = ANY(:s)"),
            {"p": program, "s": list(HOLDS_SLOT)},
        )
        return bool(used < (capacity or 0))

    async def _fill_slot(self, conn: AsyncConnection, program: str, now: dt.datetime) -> None:
        if not await self._slot_free(conn, program):
            return
        waiting = await conn.scalar(
            text(
                "SELECT id FROM candidate WHERE program = :p AND status = 'queued' ORDER BY seq LIMIT 1 "
                "FOR UPDATE SKIP LOCKED"
            ),
            {"p": program},
        )
        if waiting is not None:
            await self._propose(conn, waiting, now)

    async def expire_due(self, conn: AsyncConnection, now: dt.datetime, *, limit: int = 100) -> int:
        """Expire pending candidates nobody acted on (one batch; the service calls it periodically)."""
        due = (
            await conn.execute(
                text(
                    "SELECT id FROM candidate WHERE status = 'pending' AND expires_at <= :now ORDER BY expires_at "
                    "LIMIT :n FOR UPDATE SKIP LOCKED"
                ),
                {"now": now, "n": limit},
            )
        ).scalars().all()
        for candidate_id in due:
            await self.transition(conn, candidate_id, "expire", actor="system", reason="not acted on", now=now)
        return len(due)

    async def _record_transition(
        self,
        conn: AsyncConnection,
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
            row = (
                await conn.execute(
                    text(
                        "SELECT person_id, program, (SELECT count(*) FROM candidate_transition "
                        "WHERE candidate_id = :c) AS seq FROM candidate WHERE id = :c"
                    ),
                    {"c": candidate_id},
                )
            ).one()
            known = (row.person_id, row.program, int(row.seq))
        person_id, program, seq = known
        event = EnrollmentEventV1(
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
        await conn.execute(
            text(
                "WITH t AS (INSERT INTO candidate_transition (candidate_id, from_status, to_status, actor, reason, at, "
                "event_id) VALUES (:c, :f, :t, :a, :r, :at, :e)) "
                "INSERT INTO outbox (topic, key, payload, event_id) VALUES (:topic, :key, :payload, :e)"
            ),
            {"c": candidate_id, "f": from_status, "t": to_status, "a": actor, "r": reason, "at": now,
             "e": event.event_id, "topic": self.topics.events, "key": str(person_id),
             "payload": event.model_dump_json().encode()},
        )
        metrics.TRANSITIONS.labels(program=program, to_status=to_status).inc()

    async def _outbox(self, conn: AsyncConnection, topic: str, key: str, event_id: uuid.UUID, payload: str) -> None:
        await conn.execute(
            text("INSERT INTO outbox (topic, key, payload, event_id) VALUES (:t, :k, :p, :e)"),
            {"t": topic, "k": key, "p": payload.encode(), "e": event_id},
        )


def identity_key(authority: str, value: str) -> str:
    """The key of an identity as the listener computes it (`adt_listener.normalize.patient_key`)."""
    return patient_key(authority, value)
