"""The candidate / person page and its actions (issue 13, pages 2 and 3).

GET  /candidates/{id}                 who and where, the decision in plain words, the
                                      encounters as a timeline, identities, PCP, consents,
                                      who was told what, the outreach log and the actions
POST /candidates/{id}/accept          outreach started              (confirmation step)
POST /candidates/{id}/consent         the patient opted in: enrolled (confirmation step)
POST /candidates/{id}/decline         with a reason from the API's list
POST /candidates/{id}/disenroll       with a reason from the API's list
POST /candidates/{id}/outreach        an outreach attempt: time, channel, outcome, note
POST /candidates/{id}/services        a pre-discharge visit, home visit or PCP appointment

Everything is read and done through the enrollment and notifier APIs as the signed-in
user (`webapp.api`), so the APIs authorise (a TOC user asking for a SUD-ENS candidate gets
their 403) and audit each read and change. A refusal (409: "already accepted by ... at
...", a reason missing) is shown as a page with the API's reason; a form value that does
not parse is a 400 page naming the field. Ids only in URLs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webapp.api import ApiError
from webapp.views import candidate as view
from webapp.web import PageError, SignedIn, Web, render

router = APIRouter()

# The API's vocabularies (enrollment_svc.status and the outreach endpoint); the API checks them.
DECLINE_REASONS = {"refused": "the patient refused", "not_reached": "could not be reached",
                   "not_eligible": "not eligible after all", "already_served": "already served elsewhere",
                   "other": "another reason"}
DISENROLL_REASONS = {"handoff_complete": "hand-off to a longitudinal provider complete",
                     "risk_reduced": "risk low enough", "refused": "the client refused",
                     "not_engaged": "the client does not engage", "duration_complete": "the program's duration is over",
                     "moved_away": "moved away", "deceased": "deceased"}
CHANNELS = {"phone": "phone", "in_person": "in person", "text": "text message", "letter": "letter"}
OUTCOMES = {"reached": "reached", "no_answer": "no answer", "wrong_number": "wrong number", "refused": "refused"}
SERVICES = {"pre_discharge_visit": "pre-discharge visit", "home_visit": "home visit",
            "pcp_appointment": "PCP appointment"}
DONE = {"accept": "Accepted: outreach started.", "consent": "Enrolled: the patient's consent is recorded.",
        "decline": "Declined.", "disenroll": "Disenrolled.", "outreach": "Outreach attempt recorded.",
        "services": "Service recorded."}
NOTE_MAX = 500


@router.get("/candidates/{candidate_id}", response_class=HTMLResponse)
async def candidate_page(request: Request, web: Web, viewer: SignedIn, candidate_id: uuid.UUID,
                         done: str | None = None) -> Response:
    who = viewer.name
    candidate = await web.api.get("enrollment", f"/v1/candidates/{candidate_id}", who)
    person = await web.api.get("enrollment", f"/v1/persons/{candidate['person_id']}", who)
    notices: Any = None
    try:
        notices = await web.api.get("notifier", f"/v1/persons/{candidate['person_id']}/notices", who)
    except ApiError:
        notices = None  # the page still shows; Part 2 then holds (no consent known)
    now = dt.datetime.now(dt.UTC)
    page = view.build(candidate, person, notices, now)
    zone = ZoneInfo(str(person.get("timezone") or web.time_zone))
    return render(request, "candidate/page.html", {
        "page": page, "done": DONE.get(done or ""), "now_local": now.astimezone(zone).strftime("%Y-%m-%dT%H:%M"),
        "decline_reasons": DECLINE_REASONS, "disenroll_reasons": DISENROLL_REASONS, "channels": CHANNELS,
        "outcomes": OUTCOMES, "services": SERVICES, "note_max": NOTE_MAX,
        "can_act": candidate.get("program") in viewer.user.programs(write=True),
    })


def _back(candidate_id: uuid.UUID, done: str) -> RedirectResponse:
    return RedirectResponse(f"/candidates/{candidate_id}?done={done}", status_code=303)


def _choice(field: str, value: str, allowed: dict[str, str]) -> str:
    if value not in allowed:
        raise PageError(400, "Something in the form is not right",
                        f"{field}: choose one of {', '.join(allowed.values())}.")
    return value


def _local_time(field: str, value: str, zone: str) -> str:
    """A ``datetime-local`` field (the site's wall clock) as ISO 8601 with its offset."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise PageError(400, "Something in the form is not right",
                        f"{field}: not a date and time (e.g. 2026-12-02T14:30).") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone))
    return parsed.isoformat()


@router.post("/candidates/{candidate_id}/accept")
async def accept(web: Web, viewer: SignedIn, candidate_id: uuid.UUID) -> Response:
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/accept", viewer.name)
    return _back(candidate_id, "accept")


@router.post("/candidates/{candidate_id}/consent")
async def consent(web: Web, viewer: SignedIn, candidate_id: uuid.UUID) -> Response:
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/consent", viewer.name)
    return _back(candidate_id, "consent")


@router.post("/candidates/{candidate_id}/decline")
async def decline(web: Web, viewer: SignedIn, candidate_id: uuid.UUID,
                  reason: Annotated[str, Form()]) -> Response:
    body = {"reason": _choice("reason", reason, DECLINE_REASONS)}
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/decline", viewer.name, body)
    return _back(candidate_id, "decline")


@router.post("/candidates/{candidate_id}/disenroll")
async def disenroll(web: Web, viewer: SignedIn, candidate_id: uuid.UUID,
                    reason: Annotated[str, Form()]) -> Response:
    body = {"reason": _choice("reason", reason, DISENROLL_REASONS)}
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/disenroll", viewer.name, body)
    return _back(candidate_id, "disenroll")


@router.post("/candidates/{candidate_id}/outreach")
async def outreach(web: Web, viewer: SignedIn, candidate_id: uuid.UUID, at: Annotated[str, Form()],
                   channel: Annotated[str, Form()], outcome: Annotated[str, Form()],
                   note: Annotated[str, Form()] = "") -> Response:
    if len(note) > NOTE_MAX:
        raise PageError(400, "Something in the form is not right", f"note: at most {NOTE_MAX} characters.")
    body = {"at": _local_time("at", at, web.time_zone), "channel": _choice("channel", channel, CHANNELS),
            "outcome": _choice("outcome", outcome, OUTCOMES), "note": note.strip() or None}
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/outreach", viewer.name, body)
    return _back(candidate_id, "outreach")


@router.post("/candidates/{candidate_id}/services")
async def record_service(web: Web, viewer: SignedIn, candidate_id: uuid.UUID, kind: Annotated[str, Form()],
                         at: Annotated[str, Form()]) -> Response:
    body = {"kind": _choice("kind", kind, SERVICES), "at": _local_time("at", at, web.time_zone)}
    await web.api.post("enrollment", f"/v1/candidates/{candidate_id}/services", viewer.name, body)
    return _back(candidate_id, "services")
