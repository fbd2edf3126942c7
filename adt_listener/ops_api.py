"""The listener's ops API: feeds, the message browser, re-processing (role ``ops``).

    GET  /v1/feeds[?tz=America/Los_Angeles]     per facility: last message, today's AA/AE/AR and
                                                retransmissions, today's findings, relay backlog
    GET  /v1/messages?facility=&control_id=&event=&ack=&since=&until=&limit=&before=
                                                search, newest first (keyset: before=<last id>)
    GET  /v1/messages/{id}                      one message segment by segment, its ACK, event,
                                                findings, re-runs; an audit row (PHI is read)
    POST /v1/messages/{id}/reprocess            re-run intake on a rejected message
                                                (`adt_listener.reprocess`); audited

Bearer tokens of ``WPC_USERS_FILE`` (`services.auth`, the same users as the other APIs),
role ``ops``: 401 without a valid token, 403 without the role. ``POST /v1/adt`` keeps its
own sender tokens (`adt_listener.senders`). No PHI in a URL: the path holds message ids,
the query only MSH-4, MSH-10, the trigger, the ACK code and times.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener import feeds
from adt_listener.intake import IntakePolicy
from adt_listener.reprocess import Conflict, NotFound, reprocess
from services import audit
from services.parking import Ops


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise HTTPException(400, f"tz={name[:64]!r}: not an IANA time zone (e.g. America/Los_Angeles)") from exc


def _aware(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(400, f"{name}: give a time zone offset (e.g. 2026-12-02T08:00:00-08:00)")
    return value


def ops_router(
    engine: Callable[[], AsyncEngine],
    *,
    policy: IntakePolicy,
    senders_file: Path | None,
    service: str,
    deadletter_topic: str,
    on_accepted: Callable[[], None] = lambda: None,
) -> APIRouter:
    """``engine``: called per request (the router may be built before the engine exists).
    ``on_accepted``: called after a re-run accepted a message (wakes the events relay)."""
    router = APIRouter(tags=["feeds"])

    @router.get("/v1/feeds")
    async def get_feeds(user: Ops, tz: str = "UTC") -> dict[str, Any]:
        return await feeds.overview(engine(), tz=_zone(tz), now=dt.datetime.now(dt.UTC),
                                    service=service, deadletter_topic=deadletter_topic)

    @router.get("/v1/messages")
    async def search_messages(
        user: Ops,
        facility: Annotated[str | None, Query(max_length=227)] = None,
        control_id: Annotated[str | None, Query(max_length=199)] = None,
        event: Annotated[str | None, Query(pattern=r"^[A-Z0-9]{3}$")] = None,
        ack: Literal["AA", "AE", "AR"] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=feeds.MAX_PAGE)] = 50,
        before: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        q = feeds.Query(facility=facility, control_id=control_id, event=event, ack=ack,
                        since=_aware(since, "since"), until=_aware(until, "until"), limit=limit, before=before)
        return await feeds.search(engine(), q)

    @router.get("/v1/messages/{message_id}")
    async def get_message(message_id: uuid.UUID, user: Ops) -> dict[str, Any]:
        async with engine().begin() as conn:
            found = await feeds.detail(conn, message_id, policy)
            if found is None:
                raise HTTPException(404, f"no message {message_id}")
            # Reading a message is reading PHI: the trail names who and which message, in
            # the read's transaction.
            await audit.record(conn, user.audit_actor, "message.read", detail=f"message {message_id}")
        return found

    @router.post("/v1/messages/{message_id}/reprocess")
    async def reprocess_message(message_id: uuid.UUID, user: Ops) -> dict[str, Any]:
        try:
            outcome = await reprocess(engine(), message_id, actor=user.audit_actor, policy=policy,
                                      senders_file=senders_file)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from exc
        if outcome.accepted_id is not None:
            on_accepted()
        return {"message_id": outcome.message_id, "ack_code": outcome.ack_code, "findings": outcome.findings,
                "accepted_id": outcome.accepted_id, "sender": outcome.sender}

    return router
