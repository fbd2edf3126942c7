"""The pilot's measures for program managers (and care teams, for their programs).

GET /measures?program=TOC[&months=6]    charts per measure, month by month, with the 50% target
GET /measures.csv?program=TOC[&months=6] the same figures as CSV (a download)
GET /demo-inbox                          the demo inbox (`wpc up` without WPC_NOTIFY_FILE) as cards

The figures come from the enrollment API's ``GET /v1/measures`` as the signed-in user
(ops: every program; a care team: its own). Computed in `webapp.views.measures`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from schemas.enrollment import PROGRAMS
from webapp.views.demo_inbox import build_cards
from webapp.views.measures import MeasuresView, build_measures, measures_csv, months_back
from webapp.web import PageError, SignedIn, Web, render

router = APIRouter()

Months = Annotated[int, Query(ge=1, le=24)]


def _programs(viewer: SignedIn, program: str | None) -> list[str]:
    allowed = [p for p in PROGRAMS if viewer.user.has("ops") or p in viewer.user.programs()]
    if not allowed:
        raise PageError(403, "Not allowed", "Your role includes no program's measures.")
    if program in (None, ""):
        return allowed
    if program not in PROGRAMS:
        raise PageError(404, "No such program", f"Choose one of {', '.join(PROGRAMS)}.")
    if program not in allowed:
        raise PageError(403, "Not allowed", f"Your role does not include the {program} program's measures.")
    return [program]


async def _views(web: Web, viewer: SignedIn, programs: list[str], months: int) -> list[MeasuresView]:
    wanted = months_back(dt.datetime.now(dt.UTC).date(), months)
    answers: list[dict[str, Any]] = [
        await web.api.get("enrollment", "/v1/measures", viewer.name, {"month": m}) for m in wanted
    ]
    return [build_measures(p, answers) for p in programs]


@router.get("/measures", response_class=HTMLResponse)
async def measures(request: Request, web: Web, viewer: SignedIn, program: str | None = None,
                   months: Months = 6) -> Response:
    programs = _programs(viewer, program)
    views = await _views(web, viewer, programs, months)
    choices = _programs(viewer, None)
    return render(request, "measures/index.html", {"views": views, "program": program or "", "months": months,
                                                   "choices": choices})


@router.get("/measures.csv")
async def measures_download(web: Web, viewer: SignedIn, program: str | None = None, months: Months = 6) -> Response:
    views = await _views(web, viewer, _programs(viewer, program), months)
    name = f"wpc-measures-{program or 'all'}-{views[0].months[-1] if views else ''}.csv"
    return Response(measures_csv(views), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/demo-inbox", response_class=HTMLResponse)
async def demo_inbox(request: Request, web: Web, viewer: SignedIn) -> Response:
    url: str = getattr(request.app.state, "demo_inbox_url", "")
    items: list[dict[str, Any]] = []
    problem = ""
    if url:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                answer = await client.get(f"{url.rstrip('/')}/v1/received")
            answer.raise_for_status()
            items = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"The demo inbox did not answer ({type(exc).__name__}). Is `wpc up` still running?"
    return render(request, "demo/inbox.html", {"configured": bool(url), "problem": problem,
                                               "cards": build_cards(items, web.time_zone)})
