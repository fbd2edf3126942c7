"""Candidates: their proposal, lifecycle and program slots, with their outbox rows. The
decisions are pure rules elsewhere (`status.next_status`, `slots`, `merges`); this
repository loads what they read and writes what they decide.

A candidate is created queued, with its recorded decision (`decide.recorded_decision`),
its first transition and that transition's `enrollment.events` outbox row in one
statement; it is proposed (pending: published on `enrollment.candidates`) when its
program has a free slot, else it waits in creation order. Every status change
(`enrollment_svc.status`) writes its transition and outbox row; a change that frees a
slot proposes the oldest queued candidate of the program.

Program capacity is counted under a row lock on ``program_capacity`` held to commit,
in a statement after the lock (READ COMMITTED: a statement sees what was committed when
it began). One active candidate per person: the partial unique index
``candidate_one_active_uq``; when two persons become one, the survivor's active
candidate stays and the other's is withdrawn (`decide.MERGED`).

Methods run in the caller's transaction, on the store's `Sql`. The outbox rows are the
enrollment service's own (`services.outbox.Outbox`): its name, and only its topics.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

from enrollment_svc import decide, merges, metrics, slots
from enrollment_svc.model import Evaluation, Trigger
from enrollment_svc.rules import Rules
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.sql import Sql
from enrollment_svc.status import ACTIVE, HOLDS_SLOT, TRANSITIONS, TransitionError, next_status
from schemas.adt_event import Identifier, Provider
from schemas.enrollment import (
    CriterionV1,
    EncounterRef,
    EnrollmentCandidateV1,
    EnrollmentEventV1,
    candidate_event_id,
    transition_event_id,
)
from services.outbox import Outbox

__all__ = ["Candidates", "Topics"]

# What the care team sees of a candidate (`EnrollmentStore.candidate`, the API's bodies).
_SHOWN = (
    "SELECT c.id, c.person_id, c.program, c.status, c.facility, c.encounter_id, c.rule_version, c.decision, "
    "c.created_at, c.proposed_at, c.expires_at, c.updated_at, c.status_reason FROM candidate c "
)


@dataclasses.dataclass(frozen=True)
class Topics:
    candidates: str = "enrollment.candidates"
    events: str = "enrollment.events"


@dataclasses.dataclass(frozen=True)
class _Proposal:
    """A queued candidate's proposal, read and built (`Candidates._proposal`), not yet written."""

    candidate: EnrollmentCandidateV1
    transition: EnrollmentEventV1


class Candidates:
    """The candidates' repository and lifecycle rules (slots, one active per person)."""

    def __init__(self, rules: Rules, topics: Topics = Topics(), outbox: Outbox | None = None) -> None:
        self.rules = rules
        self.topics = topics
        # The service's outbox: the two topics written here must be its own (checked now).
        self.outbox = outbox or Outbox.of(EnrollmentSettings.service, (topics.candidates, topics.events))
        self.outbox.check(topics.candidates)
        self.outbox.check(topics.events)

    # --- what the care team reads and records ----------------------------------------------

    async def shown(self, db: Sql, candidate_id: uuid.UUID) -> dict[str, Any] | None:
        """One candidate as the care team sees it, or None."""
        row = await db.row(_SHOWN + "WHERE c.id = :c", {"c": candidate_id})
        return dict(row) if row is not None else None

    async def listing(
        self, db: Sql, programs: list[str], status: str | None, facility: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Candidates of ``programs``, newest first, optionally of one status and one facility."""
        rows = await db.fetch(
            _SHOWN + "WHERE c.program = ANY(:p) AND (CAST(:s AS text) IS NULL OR c.status = :s) "
            "AND (CAST(:f AS text) IS NULL OR c.facility = :f) ORDER BY c.seq DESC LIMIT :n",
            {"p": programs, "s": status, "f": facility, "n": limit},
        )
        return [dict(r) for r in rows]

    async def of_person(self, db: Sql, person_id: uuid.UUID) -> list[dict[str, Any]]:
        """Every candidate of a person, newest first."""
        rows = await db.fetch(_SHOWN + "WHERE c.person_id = :p ORDER BY c.seq DESC", {"p": person_id})
        return [dict(r) for r in rows]

    async def programs_of(self, db: Sql, person_id: uuid.UUID) -> set[str]:
        """The programs a person was ever a candidate of (whose care teams may read the person)."""
        rows = await db.fetch("SELECT DISTINCT program FROM candidate WHERE person_id = :p", {"p": person_id})
        return {r["program"] for r in rows}

    async def transitions(self, db: Sql, candidate_id: uuid.UUID) -> list[dict[str, Any]]:
        """A candidate's status changes, oldest first."""
        rows = await db.fetch(
            "SELECT from_status, to_status, actor, reason, at FROM candidate_transition "
            "WHERE candidate_id = :c ORDER BY id",
            {"c": candidate_id},
        )
        return [dict(r) for r in rows]

    async def record_service(self, db: Sql, candidate_id: uuid.UUID, kind: str, at: dt.datetime, actor: str) -> None:
        """A service delivered to a candidate (for the measures)."""
        await db.execute(
            "INSERT INTO service_record (candidate_id, kind, at, actor) VALUES (:c, :k, :at, :a)",
            {"c": candidate_id, "k": kind, "at": at, "a": actor},
        )

    # --- proposals, lifecycle, slots -------------------------------------------------------

    async def sync_capacity(self, db: Sql) -> None:
        """Make ``program_capacity`` say what the rules say (run at start, in a transaction)."""
        for program, spec in self.rules.programs.items():
            await db.execute(
                "INSERT INTO program_capacity (program, capacity) VALUES (:p, :c) "
                "ON CONFLICT (program) DO UPDATE SET capacity = EXCLUDED.capacity",
                {"p": program, "c": spec.capacity},
            )

    async def create(
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
                "d": json.dumps(body),
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
        if slots.placement(await self._occupancy(db, program)) == "queued":
            return candidate_id, "queued"
        await self._publish(db, proposal)
        return candidate_id, "pending"

    async def propose(self, db: Sql, candidate_id: uuid.UUID, now: dt.datetime) -> None:
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

    async def transition(
        self, db: Sql, candidate_id: uuid.UUID, action: str, *, actor: str, reason: str | None, now: dt.datetime,
        refill: bool = True,
    ) -> str:
        """Apply an action of `enrollment_svc.status`; frees and refills a slot when one is released
        (``refill`` false: the caller gives the slot to a candidate of its own, then refills)."""
        row = await db.row("SELECT status, program FROM candidate WHERE id = :c FOR UPDATE", {"c": candidate_id})
        if row is None:
            raise LookupError("unknown candidate")
        if (row["status"], action) not in TRANSITIONS:
            # Two people acting at once: the second waited on the row lock above and finds the
            # first one's change; say whose, and when, rather than only "cannot".
            raise TransitionError(await self._already(db, candidate_id, row["status"], action))
        target = next_status(row["status"], action, reason)
        if action == "promote":
            await self.propose(db, candidate_id, now)
            return target
        await db.execute(
            "UPDATE candidate SET status = :s, status_reason = :r, updated_at = :now WHERE id = :c",
            {"s": target, "r": reason, "now": now, "c": candidate_id},
        )
        await self._record_transition(db, candidate_id, row["status"], target, actor=actor, reason=reason, now=now)
        if refill and slots.releases_slot(row["status"], target):
            await self.fill_slot(db, row["program"], now)
        return target

    async def _already(self, db: Sql, candidate_id: uuid.UUID, status: str, action: str) -> str:
        """Why ``action`` cannot be done: the status, who brought the candidate to it, and when
        (in the site's time zone). Names a user, never patient data."""
        last = await db.row(
            "SELECT actor, at FROM candidate_transition WHERE candidate_id = :c AND to_status = :s "
            "ORDER BY id DESC LIMIT 1",
            {"c": candidate_id, "s": status},
        )
        if last is None:
            return f"cannot {action} a candidate that is {status}"
        at = last["at"].astimezone(self.rules.site.zone()).strftime("%Y-%m-%d %H:%M %Z")
        if any(act == action and to == status for (_, act), to in TRANSITIONS.items()):
            return f"cannot {action}: already {status} by {last['actor']} at {at}"  # someone did it first
        return f"cannot {action} a candidate that is {status} ({status} by {last['actor']} at {at})"

    async def record_outreach(
        self, db: Sql, candidate_id: uuid.UUID, *, at: dt.datetime, channel: str, outcome: str, note: str | None,
        actor: str,
    ) -> int:
        """One attempt of the care team to reach the candidate (migration 0009); its id."""
        attempt_id: int = await db.scalar(
            "INSERT INTO outreach_attempt (candidate_id, at, channel, outcome, note, actor) "
            "VALUES (:c, :at, :ch, :o, :n, :a) RETURNING id",
            {"c": candidate_id, "at": at, "ch": channel, "o": outcome, "n": note, "a": actor},
        )
        return attempt_id

    async def worklog(self, db: Sql, candidate_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
        """The care team's record of a candidate: outreach attempts and services, newest first."""
        outreach = await db.fetch(
            "SELECT id, at, channel, outcome, note, actor, recorded_at FROM outreach_attempt "
            "WHERE candidate_id = :c ORDER BY at DESC, id DESC",
            {"c": candidate_id},
        )
        services = await db.fetch(
            "SELECT id, kind, at, actor, recorded_at FROM service_record WHERE candidate_id = :c "
            "ORDER BY at DESC, id DESC",
            {"c": candidate_id},
        )
        return {"outreach": [dict(r) for r in outreach], "services": [dict(r) for r in services]}

    async def revise(self, db: Sql, candidate_id: uuid.UUID, proposal: decide.Proposal, now: dt.datetime) -> None:
        """Record the decision the in-order feed would have recorded for a kept candidate."""
        await db.execute(
            "UPDATE candidate SET decision = CAST(:d AS jsonb), rule_version = :rv, updated_at = :now "
            "WHERE id = :c",
            {"d": json.dumps(proposal.record()), "rv": proposal.evaluation.rule_version, "now": now,
             "c": candidate_id},
        )

    async def _occupancy(self, db: Sql, program: str) -> slots.Occupancy:
        """The program's slots (`enrollment_svc.slots`); the capacity row stays locked until commit,
        so two transactions cannot both take the last slot. The count is a statement of its own,
        after the lock: one statement's reads would not see what the previous holder committed."""
        capacity = await db.scalar(
            "SELECT capacity FROM program_capacity WHERE program = :p FOR UPDATE", {"p": program}
        )
        used = await db.scalar(
            "SELECT count(*) FROM candidate WHERE program = :p AND status = ANY(:s)",
            {"p": program, "s": list(HOLDS_SLOT)},
        )
        return slots.Occupancy(capacity=capacity or 0, used=int(used))

    async def fill_slot(self, db: Sql, program: str, now: dt.datetime) -> None:
        """Refill the program (`slots.next_in_line`): the oldest queued candidate, when a slot is free."""
        occupancy = await self._occupancy(db, program)
        if not occupancy.free:
            return  # no need to read the queue
        waiting = await db.fetch(
            "SELECT id FROM candidate WHERE program = :p AND status = 'queued' ORDER BY seq LIMIT 1 "
            "FOR UPDATE SKIP LOCKED",
            {"p": program},
        )
        chosen = slots.next_in_line(occupancy, [r["id"] for r in waiting])
        if chosen is not None:
            await self.propose(db, chosen, now)

    async def expire_due(self, db: Sql, now: dt.datetime, *, limit: int = 100) -> int:
        """Expire pending candidates nobody acted on (one batch; the service calls it periodically)."""
        due = [
            r["id"]
            for r in await db.fetch(
                "SELECT id FROM candidate WHERE status = 'pending' AND expires_at <= :now ORDER BY expires_at "
                "LIMIT :n FOR UPDATE SKIP LOCKED",
                {"now": now, "n": limit},
            )
        ]
        for candidate_id in due:
            await self.transition(db, candidate_id, "expire", actor="system", reason="not acted on", now=now)
        return len(due)

    async def move(
        self, db: Sql, from_person: uuid.UUID, into_person: uuid.UUID, now: dt.datetime, *, actor: str
    ) -> None:
        """One active candidate per person survives a merge: the survivor's; the other is withdrawn
        (`decide.MERGED`: it binds no later decision, which the merged person's replay makes)."""
        active = {r["person_id"]: r["id"] for r in await db.fetch(
            "SELECT person_id, id FROM candidate WHERE person_id = ANY(:ps) AND status = ANY(:a)",
            {"ps": [from_person, into_person], "a": list(ACTIVE)},
        )}
        withdrawn = merges.withdrawn_on_merge(active.get(into_person), active.get(from_person))
        if withdrawn is not None:
            await self.transition(db, withdrawn, "withdraw", actor="system", reason=decide.MERGED, now=now)
        await db.execute(
            "UPDATE candidate SET person_id = :i WHERE person_id = :f", {"i": into_person, "f": from_person}
        )

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
