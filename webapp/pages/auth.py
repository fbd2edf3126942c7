"""Sign-in and sign-out (`webapp.sessions`), and the home page that leads to the user's worklist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from webapp.metrics import SIGN_INS
from webapp.nav import nav_links
from webapp.sessions import Session
from webapp.web import SignedIn, Web, render, session_of, set_session

router = APIRouter()

_ENDED = {
    "idle": "You were signed out after a while without activity. Sign in again to go on.",
    "expired": "Your session reached its time limit. Sign in again to go on.",
}


def _local_path(target: str | None) -> str:
    """Where to go after sign-in: a path of this site only (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


@router.get("/signin", response_class=HTMLResponse)
async def sign_in_page(request: Request, web: Web, next: str | None = None, signed_out: str | None = None
                       ) -> Response:
    session = session_of(request)
    if session.user and web.users.named(session.user) is not None:
        return RedirectResponse(_local_path(next), status_code=303)
    notice = "You are signed out." if signed_out else _ENDED.get(session.ended, "")
    return render(request, "auth/signin.html", {"next": _local_path(next), "notice": notice})


@router.post("/signin", response_class=HTMLResponse)
async def sign_in(
    request: Request, web: Web, username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "", next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    user = web.users.sign_in(username.strip(), password) if username.strip() and password else None
    if user is None:
        SIGN_INS.labels("refused").inc()
        return render(request, "auth/signin.html",
                      {"next": _local_path(next), "error": "That name and password do not match a user.",
                       "username": username}, status=401)
    SIGN_INS.labels("ok").inc()
    set_session(request, session_of(request).signed_in(user.name, web.clock()))
    return RedirectResponse(_local_path(next), status_code=303)


@router.post("/signout")
async def sign_out(request: Request, web: Web) -> Response:
    set_session(request, Session.fresh(web.clock()))
    return RedirectResponse("/signin?signed_out=1", status_code=303)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, viewer: SignedIn) -> Response:
    links = nav_links(viewer.user)
    if links:
        return RedirectResponse(links[0][1], status_code=303)
    return render(request, "home.html", {})
