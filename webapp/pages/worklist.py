"""The worklist of one program: its active candidates, what is due next first, live.

GET /worklist?program=TOC[&facility=..&status=..]   the page (403 for a program the user may not see)
GET /worklist/rows?program=...                       the table alone (the live refresh fetches it)
GET /worklist/stream?program=...                     Server-Sent Events: "changed" when the list did
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from schemas.enrollment import PROGRAMS
from webapp.api import ApiError
from webapp.metrics import LIVE_STREAMS
from webapp.views.worklist import build_worklist
from webapp.web import PageError, SignedIn, Web, mark_passive, render

router = APIRouter()

STATUSES = ("queued", "pending", "accepted", "enrolled")


def _program(viewer_programs: frozenset[str], program: str | None) -> str:
    if program not in PROGRAMS:
        raise PageError(404, "No such program", f"Choose one of {', '.join(PROGRAMS)}.")
    if program not in viewer_programs:
        raise PageError(403, "Not allowed", f"Your role does not include the {program} program's candidates.")
    return program


async def _worklist(request: Request, web: Web, viewer: SignedIn, program: str | None, facility: str | None,
                    region: str | None, status: str | None) -> dict[str, Any]:
    chosen = _program(viewer.user.programs(), program)
    if status not in (None, "", *STATUSES):
        raise PageError(400, "Not a status", f"Choose one of {', '.join(STATUSES)}.")
    body = await web.api.get("enrollment", "/v1/worklist", viewer.name,
                              {"program": chosen, "facility": facility, "region": region, "status": status})
    view = build_worklist(body, dt.datetime.now(dt.UTC), web.time_zone)
    return {"program": chosen, "view": view, "filters": {"facility": facility or "", "region": region or "",
                                                         "status": status or ""}, "statuses": STATUSES}


@router.get("/worklist", response_class=HTMLResponse)
async def worklist(request: Request, web: Web, viewer: SignedIn, program: str | None = None,
                   facility: str | None = None, region: str | None = None, status: str | None = None) -> Response:
    values = await _worklist(request, web, viewer, program, facility, region, status)
    return render(request, "worklist/index.html", values)


@router.get("/worklist/rows", response_class=HTMLResponse)
async def worklist_rows(request: Request, web: Web, viewer: SignedIn, program: str | None = None,
                        facility: str | None = None, region: str | None = None,
                        status: str | None = None) -> Response:
    """The table alone, for the live refresh (it does not renew the session: nobody clicked)."""
    mark_passive(request)
    values = await _worklist(request, web, viewer, program, facility, region, status)
    return render(request, "worklist/rows.html", values)


@router.get("/worklist/stream")
async def worklist_stream(request: Request, web: Web, viewer: SignedIn, program: str | None = None) -> Response:
    """Server-Sent Events: ``changed`` when the program's candidates changed (the enrollment API's
    fingerprint, asked every WPC_WEB_LIVE_POLL_S), ``ended`` when the session's idle time is up."""
    mark_passive(request)
    chosen = _program(viewer.user.programs(), program)
    first = await web.api.get("enrollment", "/v1/worklist/version", viewer.name, {"program": chosen})
    idle_ends = viewer.session.seen_at + web.codec.idle_s

    async def events() -> AsyncIterator[str]:
        LIVE_STREAMS.inc()
        try:
            seen = first.get("version")
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                if web.clock() >= idle_ends:
                    yield "event: ended\ndata: idle\n\n"
                    return
                await asyncio.sleep(web.live_poll_s)
                try:
                    now = await web.api.get("enrollment", "/v1/worklist/version", viewer.name, {"program": chosen})
                except ApiError:
                    yield ": the enrollment API did not answer; trying again\n\n"
                    continue
                if now.get("version") != seen:
                    seen = now.get("version")
                    yield "event: changed\ndata: \n\n"
                else:
                    yield ": alive\n\n"
        finally:
            LIVE_STREAMS.dec()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
