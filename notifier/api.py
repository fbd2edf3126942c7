"""The notifier's API (FastAPI): failed deliveries and re-sends, PCP rosters, panels,
Part 2 consents, the PCP-notified measure.

``GET /v1/persons/{id}/notices`` lists who was told what about a person (for the care
team's person page). Bearer tokens and roles are the same as the enrollment service's (`services.auth`). A
delivery listing shows ids, recipients, endpoints, states and PHI-free error reasons,
never bodies. Recording or revoking a consent writes an ``audit`` row in its transaction.

Who records or revokes a Part 2 consent (`services.auth.may_handle_consent`): ops, or
the care team of a program the person is a candidate or enrollee of *now*, as the
notifier knows it from ``notifier_candidate`` (a proposal not yet given a status
counts; a declined, expired, withdrawn or disenrolled candidate does not). A refusal
never says which programs the person is in: that the person is a SUD-ENS candidate is
itself Part 2 information.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier import dispatcher, policy, store
from notifier.config import NotifyConfig
from schemas.adt_event import patient_key
from services import audit
from services.auth import User, current_user, may_handle_consent
from services.httpserver import utc_time
from services.openapi_models import DeliveryOut

CurrentUser = Annotated[User, Depends(current_user)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RosterEntry(_Body):
    member_id: str = Field(min_length=1, description="Medi-Cal member id (CIN)")
    practice_id: str = Field(min_length=1, description="A practice id of the notification configuration")
    effective_from: dt.date
    effective_to: dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RosterEntry:
        if self.effective_to is not None and self.effective_to < self.effective_from:
            raise ValueError("effective_to is before effective_from")
        return self


class RosterIn(_Body):
    source: str = Field(min_length=1, description="The health plan whose attribution this is")
    entries: list[RosterEntry] = Field(min_length=1)


class MemberIn(_Body):
    medi_cal_id: str | None = None
    authority: str | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> MemberIn:
        if not self.medi_cal_id and not (self.authority and self.value):
            raise ValueError("a member is a medi_cal_id, or an authority and a value (MRN)")
        return self

    def key(self) -> str:
        if self.medi_cal_id:
            return policy.medi_cal_key(self.medi_cal_id)
        assert self.authority is not None and self.value is not None
        return patient_key(self.authority, self.value)


class PanelIn(_Body):
    members: list[MemberIn]


class ConsentIn(_Body):
    person_id: uuid.UUID
    scope: Literal["pcp", "care_team"] = Field(
        description="42 CFR Part 2 consent to disclose SUD information to the patient's PCP, or to care teams"
    )
    granted_at: dt.datetime
    expires_at: dt.datetime | None = None
    source: str = Field(min_length=1, description="Where the signed consent form is kept")


def _require(user: User, *roles: str) -> None:
    if not any(user.has(r) for r in roles):
        raise HTTPException(403, f"this needs one of the roles: {', '.join(roles)}")


_CONSENT_ROLES = "a Part 2 consent is recorded or revoked by ops or by a care team"
_NOT_YOUR_PERSON = (
    "a Part 2 consent is recorded or revoked by ops or by the care team of a program the person is "
    "a candidate or enrollee of; none of your care team roles is such a program"
)


async def _person_programs(conn: AsyncConnection, person_id: uuid.UUID) -> set[str]:
    """Programs the person is a candidate or enrollee of now (module docstring)."""
    rows = await conn.execute(
        text("SELECT DISTINCT program FROM notifier_candidate WHERE person_id = :p "
             "AND (status IS NULL OR status <> ALL(CAST(:ended AS text[])))"),
        {"p": person_id, "ended": list(store.ENDED)},
    )
    return {str(r[0]) for r in rows}


async def _check_consent_role(conn: AsyncConnection, user: User, person_id: uuid.UUID) -> None:
    if not may_handle_consent(user, await _person_programs(conn, person_id)):
        raise HTTPException(403, _NOT_YOUR_PERSON)


def parse_roster_csv(body: str) -> list[RosterEntry]:
    """``member_id,practice_id,effective_from[,effective_to]`` with a header line."""
    reader = csv.DictReader(io.StringIO(body))
    entries = []
    for line, row in enumerate(reader, start=2):
        try:
            entries.append(RosterEntry.model_validate({k: (v or None) for k, v in row.items() if k}))
        except ValidationError as exc:
            raise ValueError(f"line {line}: {exc.errors()[0]['msg']}") from exc
    return entries


async def load_roster(engine: AsyncEngine, cfg: NotifyConfig, source: str, entries: list[RosterEntry]) -> int:
    practices = {p.id for p in cfg.practices}
    unknown = sorted({e.practice_id for e in entries if e.practice_id not in practices})
    if unknown:
        raise ValueError(f"practices not in the notification configuration: {', '.join(unknown[:5])}")
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO roster (member_id, practice_id, effective_from, effective_to, source) "
                 "SELECT * FROM unnest(CAST(:m AS text[]), CAST(:p AS text[]), CAST(:f AS date[]), "
                 "CAST(:t AS date[]), CAST(:s AS text[])) "
                 "ON CONFLICT (member_id, practice_id, effective_from) DO UPDATE SET "
                 "effective_to = EXCLUDED.effective_to, source = EXCLUDED.source, loaded_at = now()"),
            {"m": [e.member_id.strip().upper() for e in entries], "p": [e.practice_id for e in entries],
             "f": [e.effective_from for e in entries], "t": [e.effective_to for e in entries],
             "s": [source] * len(entries)},
        )
    return len(entries)


def notifier_router(
    engine: AsyncEngine,
    cfg: NotifyConfig,
    wake: Callable[[], None] = lambda: None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> APIRouter:
    """``wake`` tells the dispatcher a re-sent delivery is due now; ``clock`` is its clock."""
    router = APIRouter(prefix="/v1", tags=["notifier"])

    @router.get("/deliveries", response_model=list[DeliveryOut])
    async def deliveries(
        user: CurrentUser,
        status: Annotated[Literal["queued", "sent", "delivered", "failed"] | None, Query()] = None,
        recipient: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        _require(user, "ops")
        async with engine.connect() as conn:
            rows = await store.list_deliveries(conn, status, recipient, limit)
        return [
            {"delivery_id": str(r.id), "recipient_id": r.recipient_id, "endpoint": r.endpoint, "channel": r.channel,
             "status": r.status, "attempts": r.attempts, "notices": len(r.notice_ids), "last_error": r.last_error}
            for r in rows
        ]

    @router.post("/deliveries/{delivery_id}/resend", status_code=202)
    async def resend(delivery_id: uuid.UUID, user: CurrentUser) -> dict[str, str]:
        _require(user, "ops")
        async with engine.begin() as conn:
            ok = await store.requeue(conn, delivery_id, clock())
            if ok:
                await audit.record(conn, user.audit_actor, "resend", detail=f"delivery={delivery_id}")
        if not ok:
            raise HTTPException(409, "only a failed delivery can be re-sent (or no such delivery)")
        wake()
        return {"delivery_id": str(delivery_id), "status": "queued"}

    @router.post("/roster")
    async def roster(request: Request, user: CurrentUser) -> dict[str, int]:
        _require(user, "ops", "partner")
        raw = (await request.body()).decode("utf-8", "replace")
        try:
            if request.headers.get("content-type", "").startswith("text/csv"):
                source = request.query_params.get("source")
                if not source:
                    raise ValueError("a CSV roster needs ?source=<health plan>")
                entries = parse_roster_csv(raw)
            else:
                body = RosterIn.model_validate_json(raw)
                source, entries = body.source, body.entries
            loaded = await load_roster(engine, cfg, source, entries)
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_input=False)) from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"loaded": loaded}

    @router.put("/panels/{recipient_id}")
    async def put_panel(recipient_id: str, body: PanelIn, user: CurrentUser) -> dict[str, int]:
        _require(user, "ops", "partner")
        if cfg.recipient(recipient_id) is None:
            raise HTTPException(404, "no such recipient in the notification configuration")
        async with engine.begin() as conn:
            count = await store.replace_panel(conn, recipient_id, [m.key() for m in body.members])
            await audit.record(conn, user.audit_actor, "panel", detail=f"recipient={recipient_id} members={count}")
        return {"members": count}

    @router.post("/consents", status_code=201)
    async def add_consent(body: ConsentIn, user: CurrentUser) -> dict[str, int]:
        if not (user.has("ops") or user.programs(write=True)):
            raise HTTPException(403, _CONSENT_ROLES)
        granted = utc_time(body.granted_at)
        expires = utc_time(body.expires_at) if body.expires_at else None
        async with engine.begin() as conn:
            await _check_consent_role(conn, user, body.person_id)
            consent_id = (
                await conn.execute(
                    text("INSERT INTO consent (person_id, scope, granted_at, expires_at, recorded_by, source) "
                         "VALUES (:p, :s, :g, :x, :by, :src) RETURNING id"),
                    {"p": body.person_id, "s": body.scope, "g": granted, "x": expires, "by": user.name,
                     "src": body.source},
                )
            ).scalar_one()
            await audit.record(conn, user.audit_actor, "consent", person_id=body.person_id,
                               detail=f"scope={body.scope} consent={consent_id}")
        return {"consent_id": int(consent_id)}

    @router.post("/consents/{consent_id}/revoke")
    async def revoke_consent(consent_id: int, user: CurrentUser) -> dict[str, str]:
        if not (user.has("ops") or user.programs(write=True)):
            raise HTTPException(403, _CONSENT_ROLES)
        async with engine.begin() as conn:
            person = (
                await conn.execute(
                    text("SELECT person_id FROM consent WHERE id = :i AND revoked_at IS NULL FOR UPDATE"),
                    {"i": consent_id},
                )
            ).scalar_one_or_none()
            if person is None:
                raise HTTPException(404, "no such active consent")
            await _check_consent_role(conn, user, person)
            await conn.execute(text("UPDATE consent SET revoked_at = now() WHERE id = :i"), {"i": consent_id})
            await audit.record(conn, user.audit_actor, "consent_revoked", person_id=person,
                               detail=f"consent={consent_id}")
        return {"status": "revoked"}

    @router.get("/measures/pcp-notified")
    async def pcp_notified(user: CurrentUser) -> list[dict[str, Any]]:
        _require(user, "ops")
        async with engine.connect() as conn:
            return await dispatcher.pcp_notified(conn, cfg.timezone)

    @router.get("/persons/{person_id}/notices")
    async def person_notices(
        person_id: uuid.UUID, user: CurrentUser, limit: Annotated[int, Query(ge=1, le=500)] = 200
    ) -> dict[str, Any]:
        """Who was told what about one person and when, each delivery's status, and the person's
        Part 2 consents; with the Part 2 facts of this configuration (facilities, SUD codes), so
        that a screen applies `services.part2` with the notifier's own lists. Ops, or the care
        team of a program the person was ever proposed for."""
        async with engine.begin() as conn:
            programs = await store.person_programs_ever(conn, person_id)
            if not user.has("ops") and not programs & user.programs():
                raise HTTPException(403, "no role for this person's programs")
            notices = await store.person_notices(conn, person_id, limit)
            consents = await store.person_consents(conn, person_id, clock())
            await audit.record(conn, user.name, "read_notices", person_id=person_id)
        names = {r.id: r.name for r in (*cfg.care_teams, *cfg.practices)}
        return {
            "person_id": str(person_id),
            "notices": [{**n, "id": str(n["id"]), "recipient_name": names.get(n["recipient_id"], n["recipient_id"])}
                        for n in notices],
            "consents": consents,
            "part2": {"facilities": cfg.part2.facilities, "sud_code_prefixes": cfg.part2.sud_code_prefixes},
        }

    return router
