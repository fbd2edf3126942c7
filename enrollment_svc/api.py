"""The care team's API (FastAPI): candidates, actions, timelines, flags, links, measures.

Every endpoint needs a bearer token (`services.auth`); every read or change of a
patient's data writes an ``audit`` row (who, what, which person or candidate), in the
same transaction as a change. Errors name what is wrong with the request, never
patient data. Identity links and unlinks are ops work (role ``ops`` only): a wrong link
merges two people's histories and decisions, across every program.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from enrollment_svc import measures, worklist
from enrollment_svc.model import Flag, FlagKind
from enrollment_svc.sql import Sql
from enrollment_svc.status import TransitionError
from enrollment_svc.store import EnrollmentStore, identity_key
from services import audit, part2
from services.auth import User, current_user
from services.httpserver import utc_time
from services.openapi_models import ActionOut, CandidateDetailOut, CandidateOut, MeasuresOut, ServiceOut

CurrentUser = Annotated[User, Depends(current_user)]

_LINKS_ARE_OPS_WORK = "identity links and unlinks are ops work: they need the ops role"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IdentifierIn(_Body):
    authority: str = Field(min_length=1, description="Assigning authority (PID-3.4) or the facility's MSH-4")
    value: str = Field(min_length=1)


class ActionIn(_Body):
    reason: str | None = None


class ServiceIn(_Body):
    # No "pcp_notified": the notifier records PCP notices as it delivers them, and the
    # PCP-notified measure is its figure (enrollment_svc.reported), one number.
    kind: Literal["pre_discharge_visit", "home_visit", "pcp_appointment"]
    at: dt.datetime


class OutreachIn(_Body):
    at: dt.datetime = Field(description="When the attempt was made (with a UTC offset)")
    channel: Literal["phone", "in_person", "text", "letter"]
    outcome: Literal["reached", "no_answer", "wrong_number", "refused"]
    note: str | None = Field(default=None, max_length=500, description="Short, and no more PHI than needed")


_REACHABLE = frozenset({"pending", "accepted", "enrolled"})  # proposed to the team, not ended
_CLOCK_SLACK = dt.timedelta(minutes=5)  # a browser's clock a little ahead is not an attempt in the future


class FlagIn(_Body):
    identifier: IdentifierIn
    kind: FlagKind
    source: str = Field(min_length=1, description="The partner system or program that says so")
    effective: dt.datetime
    until: dt.datetime | None = None
    detail: str | None = None


class LinkIn(_Body):
    a: IdentifierIn
    b: IdentifierIn
    reason: str = Field(min_length=3)


class UnlinkIn(_Body):
    identifier: IdentifierIn
    reason: str = Field(min_length=3)


async def _audit(
    conn: AsyncConnection, user: User, action: str, *, person: Any = None, candidate: Any = None, detail: str = ""
) -> None:
    await audit.record(conn, user.audit_actor, action, person_id=person, candidate_id=candidate, detail=detail)


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """A repository's row as JSON-ready fields (candidates, encounters, flags)."""
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row.items()}


def enrollment_router(engine: AsyncEngine, store: EnrollmentStore) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["enrollment"])

    @router.get("/candidates", response_model=list[CandidateOut])
    async def list_candidates(
        user: CurrentUser,
        program: str | None = None,
        status: str | None = None,
        facility: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        allowed = user.programs()
        if program is not None and program not in allowed:
            raise HTTPException(403, "no role for this program")
        programs = [program] if program else sorted(allowed)
        async with engine.begin() as conn:
            rows = await store.list_candidates(conn, programs, status=status, facility=facility, limit=limit)
            for r in rows:
                await _audit(conn, user, "list_candidate", person=r["person_id"], candidate=r["id"])
        return [_row(r) for r in rows]

    async def _one(conn: AsyncConnection, user: User, candidate_id: uuid.UUID, *, write: bool) -> dict[str, Any]:
        row = await store.candidate(conn, candidate_id)
        if row is None:
            raise HTTPException(404, "no such candidate")
        if row["program"] not in user.programs(write=write):
            raise HTTPException(403, "no role for this candidate's program")
        return row

    @router.get("/candidates/{candidate_id}", response_model=CandidateDetailOut)
    async def read_candidate(candidate_id: uuid.UUID, user: CurrentUser) -> dict[str, Any]:
        async with engine.begin() as conn:
            row = await _one(conn, user, candidate_id, write=False)
            identifiers, transitions = await store.candidate_trail(conn, candidate_id, row["person_id"])
            await _audit(conn, user, "read_candidate", person=row["person_id"], candidate=row["id"])
            worklog = await store.candidates.worklog(await Sql.of(conn), candidate_id)
        body = {**_row(row), **worklog}
        body["identifiers"] = identifiers
        body["transitions"] = transitions
        return body

    async def _act(candidate_id: uuid.UUID, action: str, reason: str | None, user: User) -> dict[str, Any]:
        async with engine.begin() as conn:
            row = await _one(conn, user, candidate_id, write=True)
            try:
                status = await store.transition(
                    conn, candidate_id, action, actor=user.name, reason=reason, now=dt.datetime.now(dt.UTC)
                )
            except TransitionError as exc:
                raise HTTPException(409, str(exc)) from exc
            await _audit(conn, user, action, person=row["person_id"], candidate=row["id"], detail=reason or "")
        return {"id": str(candidate_id), "status": status}

    @router.post("/candidates/{candidate_id}/accept", response_model=ActionOut)
    async def accept(candidate_id: uuid.UUID, user: CurrentUser) -> dict[str, Any]:
        """Outreach started."""
        return await _act(candidate_id, "accept", None, user)

    @router.post("/candidates/{candidate_id}/consent", response_model=ActionOut)
    async def consent(candidate_id: uuid.UUID, user: CurrentUser) -> dict[str, Any]:
        """The patient opted in: enrolled."""
        return await _act(candidate_id, "consent", None, user)

    @router.post("/candidates/{candidate_id}/decline", response_model=ActionOut)
    async def decline(candidate_id: uuid.UUID, body: ActionIn, user: CurrentUser) -> dict[str, Any]:
        return await _act(candidate_id, "decline", body.reason, user)

    @router.post("/candidates/{candidate_id}/disenroll", response_model=ActionOut)
    async def disenroll(candidate_id: uuid.UUID, body: ActionIn, user: CurrentUser) -> dict[str, Any]:
        return await _act(candidate_id, "disenroll", body.reason, user)

    @router.post("/candidates/{candidate_id}/services", status_code=201, response_model=ServiceOut)
    async def record_service(candidate_id: uuid.UUID, body: ServiceIn, user: CurrentUser) -> dict[str, Any]:
        """A service delivered (for the measures): pre-discharge visit, home visit, PCP appointment."""
        async with engine.begin() as conn:
            row = await _one(conn, user, candidate_id, write=True)
            await store.record_service(conn, candidate_id, body.kind, at=utc_time(body.at), actor=user.name)
            await _audit(conn, user, "record_service", person=row["person_id"], candidate=row["id"],
                         detail=body.kind)
        return {"id": str(candidate_id), "kind": body.kind}

    @router.get("/persons/{person_id}/timeline")
    async def timeline(person_id: uuid.UUID, user: CurrentUser) -> dict[str, Any]:
        """Encounters, flags, decisions (candidates) and enrollments of one person, newest first."""
        async with engine.begin() as conn:
            programs = await store.person_programs(conn, person_id)
            if not user.has("ops") and not programs & user.programs():
                raise HTTPException(403, "no role for this person's programs")
            timeline = await store.timeline(conn, person_id)
            await _audit(conn, user, "read_timeline", person=person_id)
        return {
            "person_id": str(person_id),
            "encounters": [_row(e) for e in timeline.encounters],
            "flags": [_row(f) for f in timeline.flags],
            "candidates": [_row(c) for c in timeline.candidates],
        }

    @router.post("/flags", status_code=201)
    async def add_flag(body: FlagIn, user: CurrentUser) -> dict[str, Any]:
        """A fact ADT does not carry, from a partner system (role partner) or the care team."""
        if not (user.has("partner") or user.programs(write=True)):
            raise HTTPException(403, "partner or care team role required")
        flag = Flag(
            id=str(uuid.uuid4()),
            kind=body.kind,
            source=body.source,
            effective=utc_time(body.effective),
            until=utc_time(body.until) if body.until else None,
            detail=body.detail,
        )
        key = identity_key(body.identifier.authority, body.identifier.value)
        async with engine.begin() as conn:
            try:
                applied = await store.add_flag(conn, key, flag, recorded_by=user.name, now=dt.datetime.now(dt.UTC))
            except LookupError as exc:
                raise HTTPException(404, "no patient with this identifier") from exc
            await _audit(conn, user, "add_flag", person=applied.person_id, candidate=applied.candidate_id,
                         detail=body.kind)
        return {
            "flag_id": flag.id,
            "person_id": str(applied.person_id),
            "candidate_id": str(applied.candidate_id) if applied.candidate_id else None,
            "proposed": applied.evaluation.proposed if applied.evaluation else None,
        }

    @router.post("/identity-links", status_code=201)
    async def link(body: LinkIn, user: CurrentUser) -> dict[str, Any]:
        if not user.has("ops"):
            raise HTTPException(403, _LINKS_ARE_OPS_WORK)
        async with engine.begin() as conn:
            try:
                person = await store.link(
                    conn,
                    identity_key(body.a.authority, body.a.value),
                    identity_key(body.b.authority, body.b.value),
                    actor=user.name,
                    reason=body.reason,
                )
            except LookupError as exc:
                raise HTTPException(404, "no patient with one of these identifiers") from exc
            await _audit(conn, user, "link", person=person, detail=body.reason)
        return {"person_id": str(person)}

    @router.post("/identity-unlinks", status_code=201)
    async def unlink(body: UnlinkIn, user: CurrentUser) -> dict[str, Any]:
        if not user.has("ops"):
            raise HTTPException(403, _LINKS_ARE_OPS_WORK)
        async with engine.begin() as conn:
            try:
                person = await store.unlink(
                    conn, identity_key(body.identifier.authority, body.identifier.value),
                    actor=user.name, reason=body.reason,
                )
            except LookupError as exc:
                raise HTTPException(404, "no patient with this identifier") from exc
            await _audit(conn, user, "unlink", person=person, detail=body.reason)
        return {"person_id": str(person)}

    @router.get("/measures", response_model=MeasuresOut)
    async def get_measures(
        user: CurrentUser,
        month: Annotated[str, Query(pattern=r"^\d{4}-\d{2}$")],
        program: str | None = None,
    ) -> dict[str, Any]:
        """The pilot's measures (programs.md) for enrollments of one month, per program."""
        if not user.has("ops") and not user.programs():
            raise HTTPException(403, "ops or care team role required")
        year, mon = (int(x) for x in month.split("-"))
        if not 1 <= mon <= 12 or year < 1:
            raise HTTPException(422, "month must be YYYY-MM with a month 01 to 12")
        async with engine.connect() as conn:
            result = await measures.compute(conn, dt.date(year, mon, 1), program)
        return result

    @router.get("/worklist")
    async def read_worklist(
        user: CurrentUser,
        program: str,
        status: str | None = None,
        facility: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    ) -> dict[str, Any]:
        """One program's active candidates with what their due dates need (`enrollment_svc.worklist`),
        and the program's slots: for the web app's worklist."""
        if program not in user.programs():
            raise HTTPException(403, "no role for this program")
        if status is not None and status not in worklist.ACTIVE_STATUSES:
            raise HTTPException(422, f"status must be one of {', '.join(worklist.ACTIVE_STATUSES)}")
        async with engine.begin() as conn:
            rows = await worklist.rows(conn, program, [status] if status else worklist.ACTIVE_STATUSES, facility,
                                       limit)
            for r in rows:
                await _audit(conn, user, "list_candidate", person=r["person_id"], candidate=r["id"])
            slots = await worklist.slots(conn, program)
        return {"program": program, **slots, "expiry_days": store.rules.programs[program].pending_expiry_days
                if program in store.rules.programs else None, "candidates": rows}

    @router.get("/worklist/version")
    async def worklist_version(user: CurrentUser, program: str) -> dict[str, str]:
        """A fingerprint of the program's candidates that changes when one is added or changes (no PHI)."""
        if program not in user.programs():
            raise HTTPException(403, "no role for this program")
        async with engine.connect() as conn:
            return {"program": program, "version": await worklist.version(conn, [program])}

    @router.get("/feed-findings")
    async def feed_findings(user: CurrentUser, facility: str | None = None) -> list[dict[str, Any]]:
        """Feed-quality findings of the ADT this service applied, per facility and kind
        (`enrollment_svc.findings`: visit numbers reused for another patient, event times ahead
        of receipt), with counts and when first and last seen. No PHI."""
        if not user.has("ops"):
            raise HTTPException(403, "feed findings are ops work: they need the ops role")
        async with engine.connect() as conn:
            return await store.feed_findings(conn, facility)

    @router.post("/candidates/{candidate_id}/outreach", status_code=201)
    async def record_outreach(candidate_id: uuid.UUID, body: OutreachIn, user: CurrentUser) -> dict[str, Any]:
        """An attempt of the program's care team to reach the candidate (outreach log)."""
        at = utc_time(body.at)
        now = dt.datetime.now(dt.UTC)
        if at > now + _CLOCK_SLACK:
            raise HTTPException(422, "at: an outreach attempt cannot be in the future")
        async with engine.begin() as conn:
            row = await _one(conn, user, candidate_id, write=True)
            if row["status"] not in _REACHABLE:
                raise HTTPException(409, f"outreach is recorded on a pending, accepted or enrolled candidate; "
                                         f"this one is {row['status']}")
            attempt = await store.candidates.record_outreach(
                await Sql.of(conn), candidate_id, at=at, channel=body.channel, outcome=body.outcome,
                note=body.note or None, actor=user.name,
            )
            await _audit(conn, user, "record_outreach", person=row["person_id"], candidate=row["id"],
                         detail=f"{body.channel}:{body.outcome}")
        return {"id": str(candidate_id), "outreach_id": attempt, "channel": body.channel, "outcome": body.outcome}

    @router.get("/persons/{person_id}")
    async def read_person(person_id: uuid.UUID, user: CurrentUser) -> dict[str, Any]:
        """Who the person is and where to find them (card, whereabouts), identities and links,
        the PCP and its source, encounters across every hospital, flags, candidates; and whether
        the viewer's team is a 42 CFR Part 2 program (`services.part2`), for the page to apply it."""
        async with engine.begin() as conn:
            db = await Sql.of(conn)
            candidates = [_row(c) for c in await store.candidates.of_person(db, person_id)]
            if not user.has("ops") and not {c["program"] for c in candidates} & user.programs():
                raise HTTPException(403, "no role for this person's programs")
            profile = await store.persons.profile(db, person_id, dt.datetime.now(dt.UTC))
            if profile is None:
                raise HTTPException(404, "no such person")
            await _audit(conn, user, "read_person", person=person_id)
        rules = store.rules
        return {
            **profile,
            "candidates": candidates,
            "timezone": rules.site.timezone,
            "viewer": {"part2_qualified": part2.qualified(user.programs(write=True), rules.part2_programs())},
        }

    return router
