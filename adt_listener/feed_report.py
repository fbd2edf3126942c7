"""Per-facility feed quality: what each sending facility (MSH-4) sends, and what fails.

Counts come from ``adt_message`` (every message received, with the ACK code we answered) and
``conformance_finding`` (what `adt_listener.conformance` found in the messages it checked).
Findings name locations and kinds only, never values, so the report carries no PHI.

A message the sender's mode never selected has ``conformance_checked = true`` but no
``conformance_checked_at``; only the latter counts as *checked*.

Control id reuse: an accepted message whose MSH-10 the facility had already used for a
*different* accepted message (`adt_listener.digest`; a retransmission is not a reuse).
The listener stores and processes it as the new message it is, but the sender's
interface engine is at fault (HL7 v2 chapter 2: MSH-10 identifies one message), and a
receiver that deduplicates on MSH-10 alone would drop it. Reported per facility as
counts and the first and last time seen, never the control ids or the messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:  # fastapi is imported only when the router is built: `wpc` imports every command
    from fastapi import APIRouter

    from adt_listener.senders import Senders

TOP_FINDINGS = 10


@dataclass(frozen=True, slots=True)
class FindingCount:
    kind: str
    location: str | None
    messages: int  # messages with at least one finding of this kind at this location


@dataclass(frozen=True, slots=True)
class ControlIdReuse:
    control_ids: int  # control ids that hold more than one different accepted message
    messages: int  # accepted messages that came under a control id already used (all but the first of each)
    first_seen: datetime  # received_at of the first such message (in the window)
    last_seen: datetime  # ... and of the last


@dataclass(frozen=True, slots=True)
class FacilityQuality:
    sending_facility: str  # MSH-4 as received ('' when absent)
    received: int
    accepted: int  # ACK AA
    rejected: int  # ACK AE or AR
    pending_check: int  # selected for a conformance check, not yet checked
    checked: int  # checked by hl7apy (conformance_checked_at set)
    with_findings: int  # checked, with at least one finding
    top_findings: list[FindingCount]  # most frequent first, at most TOP_FINDINGS
    control_id_reuse: ControlIdReuse | None = None  # None: no control id reused (in the window)


_MESSAGES_SQL = """
    SELECT m.sending_facility,
           count(*) AS received,
           count(*) FILTER (WHERE m.ack_code = 'AA') AS accepted,
           count(*) FILTER (WHERE m.ack_code IN ('AE', 'AR')) AS rejected,
           count(*) FILTER (WHERE NOT m.conformance_checked) AS pending_check,
           count(*) FILTER (WHERE m.conformance_checked_at IS NOT NULL) AS checked,
           count(*) FILTER (
               WHERE EXISTS (SELECT 1 FROM conformance_finding f WHERE f.message_id = m.id)
           ) AS with_findings
    FROM adt_message m
    {where}
    GROUP BY m.sending_facility
    ORDER BY m.sending_facility
"""

_FINDINGS_SQL = """
    SELECT m.sending_facility, f.kind, f.location, count(DISTINCT f.message_id) AS messages
    FROM conformance_finding f
    JOIN adt_message m ON m.id = f.message_id
    {where}
    GROUP BY m.sending_facility, f.kind, f.location
    ORDER BY m.sending_facility, messages DESC, f.kind, f.location NULLS FIRST
"""


# The reused keys first (the unique index on MSH-4, MSH-10, digest serves the grouping),
# then every accepted message under them in arrival order: all but the first of each key
# came under a control id already used. The window applies to those later messages only,
# since the first use may lie before it.
_REUSE_SQL = """
    WITH reused AS (
        SELECT sending_facility, control_id
        FROM adt_message
        WHERE ack_code = 'AA'
        GROUP BY sending_facility, control_id
        HAVING count(*) > 1
    ), ranked AS (
        SELECT m.sending_facility, m.control_id, m.received_at,
               row_number() OVER (PARTITION BY m.sending_facility, m.control_id
                                  ORDER BY m.received_at, m.id) AS nth
        FROM adt_message m
        JOIN reused r ON r.sending_facility = m.sending_facility AND r.control_id = m.control_id
        WHERE m.ack_code = 'AA'
    )
    SELECT m.sending_facility, count(DISTINCT m.control_id) AS control_ids, count(*) AS messages,
           min(m.received_at) AS first_seen, max(m.received_at) AS last_seen
    FROM ranked m
    WHERE m.nth > 1 {and_since}
    GROUP BY m.sending_facility
"""


async def feed_quality(engine: AsyncEngine, *, since: datetime | None = None) -> list[FacilityQuality]:
    """One entry per sending facility, for messages received at or after ``since`` (all if None).

    Findings are attributed to the facility of their message and to the window by the
    message's ``received_at``, so the numbers of one entry describe the same messages.
    """
    # Two statements rather than a ``:since IS NULL OR ...`` test: asyncpg cannot type a NULL
    # parameter, and the planner uses the received_at index only for a plain comparison.
    where = "WHERE m.received_at >= :since" if since is not None else ""
    params: dict[str, Any] = {"since": since} if since is not None else {}
    async with engine.connect() as conn:
        message_rows = (await conn.execute(text(_MESSAGES_SQL.format(where=where)), params)).all()
        finding_rows = (await conn.execute(text(_FINDINGS_SQL.format(where=where)), params)).all()
        and_since = "AND m.received_at >= :since" if since is not None else ""
        reuse_rows = (await conn.execute(text(_REUSE_SQL.format(and_since=and_since)), params)).all()

    reuse = {
        r.sending_facility: ControlIdReuse(int(r.control_ids), int(r.messages), r.first_seen, r.last_seen)
        for r in reuse_rows
    }

    top: dict[str, list[FindingCount]] = {}
    for r in finding_rows:
        entries = top.setdefault(r.sending_facility, [])
        if len(entries) < TOP_FINDINGS:
            entries.append(FindingCount(kind=r.kind, location=r.location, messages=int(r.messages)))
    return [
        FacilityQuality(
            sending_facility=r.sending_facility,
            received=int(r.received),
            accepted=int(r.accepted),
            rejected=int(r.rejected),
            pending_check=int(r.pending_check),
            checked=int(r.checked),
            with_findings=int(r.with_findings),
            top_findings=top.get(r.sending_facility, []),
            control_id_reuse=reuse.get(r.sending_facility),
        )
        for r in message_rows
    ]


def router(engine: AsyncEngine | Callable[[], AsyncEngine], senders: Senders | None = None) -> APIRouter:
    """``GET /v1/feed-quality[?since=ISO-8601]``: `feed_quality` as JSON.

    Takes the engine, or a callable returning it (e.g. ``lambda: app.state.engine``) when the
    router is built before the lifespan creates the engine; the callable is called per request.
    With ``senders``, a request needs ``Authorization: Bearer <ops token>``
    (`Senders.ops_token_ok`: without an ops token configured, only an open listener lets it
    through); without, authentication is left to whoever includes the router.
    """
    from fastapi import APIRouter, Depends, HTTPException
    from fastapi.security import HTTPBearer

    bearer = Depends(HTTPBearer(auto_error=False))

    # `Any`: the annotation is resolved in this module's globals, where fastapi is not imported.
    async def require_ops_token(credentials: Any = bearer) -> None:
        if senders is None:
            return
        token = credentials.credentials if credentials is not None else ""
        if not senders.ops_token_ok(token):
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    api = APIRouter(dependencies=[Depends(require_ops_token)])

    def current() -> AsyncEngine:
        return engine if isinstance(engine, AsyncEngine) else engine()

    async def get_feed_quality(since: datetime | None = None) -> list[dict[str, Any]]:
        return [dataclasses.asdict(q) for q in await feed_quality(current(), since=since)]

    api.add_api_route("/v1/feed-quality", get_feed_quality, methods=["GET"])
    return api
