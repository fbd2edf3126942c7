"""The ops pages: feeds at a glance, the message browser, re-processing, failed deliveries.

GET  /feeds                              per facility: last message, today's AA/AE/AR, retransmissions,
                                         findings; relay and consumer backlogs; failed deliveries
POST /feeds/deliveries/{id}/resend       re-send a failed delivery (notifier API)
GET  /messages?facility=&control_id=&event=&ack=&since=&until=&before=   search, newest first
GET  /messages/{id}                      one message segment by segment, its ACK, event, findings
GET  /messages/{id}/reprocess            "re-run this message?" (the confirmation)
POST /messages/{id}/reprocess            re-run it (listener API), then back to the message

Role ``ops`` only (others get the 403 page); the APIs check it again, as the signed-in
user, and audit the reads and acts under their name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webapp.api import ApiError
from webapp.views import feeds as views
from webapp.web import PageError, SignedIn, Viewer, Web, render

router = APIRouter()
T = TypeVar("T")


def _ops(viewer: Viewer) -> None:
    if not viewer.user.has("ops"):
        raise PageError(403, "Not allowed",
                        "The feeds and messages pages are for ops: your role does not include them.")


async def _or_none(call: Awaitable[T]) -> T | None:
    """A section's data, or None when its API did not answer (the page shows the others)."""
    try:
        return await call
    except ApiError:
        return None


@router.get("/feeds", response_class=HTMLResponse)
async def feeds_page(request: Request, web: Web, viewer: SignedIn, resent: uuid.UUID | None = None) -> Response:
    _ops(viewer)
    who = viewer.name
    listener, findings, enrollment, notifier, failed = await asyncio.gather(
        _or_none(web.api.get("listener", "/v1/feeds", who, {"tz": web.time_zone})),
        _or_none(web.api.get("enrollment", "/v1/feed-findings", who)),
        _or_none(web.api.get("enrollment", "/v1/consumers", who)),
        _or_none(web.api.get("notifier", "/v1/consumers", who)),
        _or_none(web.api.get("notifier", "/v1/deliveries", who, {"status": "failed", "limit": 50})),
    )
    view = views.overview(listener, findings, {"enrollment": enrollment, "notifier": notifier}, failed,
                          dt.datetime.now(dt.UTC))
    return render(request, "feeds/index.html", {"view": view, "resent": resent})


@router.post("/feeds/deliveries/{delivery_id}/resend")
async def resend(delivery_id: uuid.UUID, web: Web, viewer: SignedIn) -> Response:
    _ops(viewer)
    await web.api.post("notifier", f"/v1/deliveries/{delivery_id}/resend", viewer.name)
    return RedirectResponse(f"/feeds?resent={delivery_id}#failures", status_code=303)


@router.get("/messages", response_class=HTMLResponse)
async def messages_page(request: Request, web: Web, viewer: SignedIn) -> Response:
    _ops(viewer)
    form = {k: v for k, v in request.query_params.items()}
    try:
        query = views.search_form(form, web.time_zone)
    except views.FormProblem as exc:
        # The form again, the value named, so it is corrected where it was typed.
        return render(request, "feeds/messages.html", {"form": form, "found": [], "older": None, "problem": str(exc),
                                                       "ack_words": views.ACK_WORDS}, status=400)
    found = await web.api.get("listener", "/v1/messages", viewer.name, query)
    older = None
    if found.get("next"):
        older = {k: v for k, v in form.items() if k != "before" and v} | {"before": found["next"]}
    return render(request, "feeds/messages.html", {"form": form, "found": found["messages"], "older": older,
                                                   "ack_words": views.ACK_WORDS})


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def message_page(request: Request, message_id: uuid.UUID, web: Web, viewer: SignedIn,
                       rerun: Literal["AA", "AE", "AR"] | None = None) -> Response:
    _ops(viewer)
    detail = await web.api.get("listener", f"/v1/messages/{message_id}", viewer.name)
    values: dict[str, Any] = {"m": views.message(detail), "rerun": rerun}
    return render(request, "feeds/message.html", values)


@router.get("/messages/{message_id}/reprocess", response_class=HTMLResponse)
async def confirm_reprocess(request: Request, message_id: uuid.UUID, web: Web, viewer: SignedIn) -> Response:
    _ops(viewer)
    # The message as the listener has it: an unknown id is the 404 page, and one that
    # cannot be re-run (accepted, or re-run to AA already) says so instead of offering it.
    detail = await web.api.get("listener", f"/v1/messages/{message_id}", viewer.name)
    if not detail.get("reprocessable"):
        raise PageError(409, "Nothing to re-run",
                        "This message was accepted, or a re-run accepted it already: it is not re-run twice.")
    return render(request, "feeds/confirm.html", {"message_id": message_id, "m": views.message(detail)})


@router.post("/messages/{message_id}/reprocess")
async def reprocess(message_id: uuid.UUID, web: Web, viewer: SignedIn) -> Response:
    _ops(viewer)
    outcome = await web.api.post("listener", f"/v1/messages/{message_id}/reprocess", viewer.name)
    return RedirectResponse(f"/messages/{message_id}?rerun={outcome['ack_code']}", status_code=303)
