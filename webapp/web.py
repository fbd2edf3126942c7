"""What every page shares: the session of each request, sign-in required, the CSRF check,
templates, and the error pages.

- `session_middleware` reads the session cookie of each request (`webapp.sessions`) into
  ``request.state.session`` and writes it back, renewed, on the response. A request marked
  passive (the live stream, its refreshes) does not renew it: an open worklist alone must
  not keep an unattended screen signed in.
- `csrf_guard`, a dependency of the whole app: every request that is not GET/HEAD/OPTIONS
  must carry the session's CSRF token, as the form field ``csrf_token`` (every form has it:
  ``{{ csrf_field() }}``) or the header ``X-CSRF-Token`` (fetch); otherwise a 403 page.
- `signed_in`, a dependency of every page but sign-in: the signed-in `Viewer`, or a
  redirect to the sign-in page (401 for fetch and the live stream).
- The error pages: an API's 403 is "Not allowed", 404 "Not found", its other refusals
  show their reason, no answer is "unavailable"; a bad form or query value is a 400 page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.templating import Jinja2Templates

from services.auth import User, Users
from webapp.api import ApiClient, ApiError
from webapp.metrics import PAGE_ERRORS
from webapp.nav import nav_links
from webapp.sessions import COOKIE, Session, SessionCodec, csrf_matches

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Context:
    """What pages need from the app (`webapp.app.create_app` puts it in ``app.state.web``)."""

    users: Users
    api: ApiClient
    codec: SessionCodec
    templates: Jinja2Templates
    secure_cookies: bool
    time_zone: str
    live_poll_s: float
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request."""

    user: User
    session: Session

    @property
    def name(self) -> str:
        return self.user.name


class SignInRequired(Exception):
    pass


class CsrfRefused(Exception):
    pass


class PageError(Exception):
    """A page's own refusal (a program the user may not see, a bad filter): status and reason."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def context(request: Request) -> Context:
    web: Context = request.app.state.web
    return web


Web = Annotated[Context, Depends(context)]


def session_of(request: Request) -> Session:
    session: Session = request.state.session
    return session


def set_session(request: Request, session: Session) -> None:
    """Replace the request's session (sign-in, sign-out); written to the response's cookie."""
    request.state.session = session
    request.state.session_changed = True


def mark_passive(request: Request) -> None:
    """This request is not the user's doing (the live stream): it does not renew the session."""
    request.state.passive = True


def signed_in(request: Request) -> Viewer:
    session = session_of(request)
    user = context(request).users.named(session.user) if session.user else None
    if user is None:
        raise SignInRequired()
    return Viewer(user, session)


SignedIn = Annotated[Viewer, Depends(signed_in)]


async def csrf_guard(request: Request) -> None:
    if request.method in _SAFE_METHODS:
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()  # kept by Starlette: the route's Form fields read it again
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not csrf_matches(session_of(request), given):
        raise CsrfRefused()


async def session_middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    if request.url.path.startswith(("/static/", "/healthz", "/readyz", "/metrics")):
        return await call_next(request)
    web = context(request)
    now = web.clock()
    request.state.session = web.codec.decode(request.cookies.get(COOKIE), now)
    request.state.session_changed = False
    request.state.passive = False
    response = await call_next(request)
    session = session_of(request)
    if request.state.passive and not request.state.session_changed:
        return response
    if not request.state.session_changed and session.user:
        session = session.touched(now)
    response.set_cookie(COOKIE, web.codec.encode(session), httponly=True, samesite="lax",
                        secure=web.secure_cookies, path="/")
    return response


def render(request: Request, template: str, values: Mapping[str, Any] | None = None, *,
           status: int = 200) -> HTMLResponse:
    """``template`` with ``values``, the request, its user and the CSRF helpers."""
    web = context(request)
    session: Session | None = getattr(request.state, "session", None)
    user = web.users.named(session.user) if session is not None and session.user else None
    csrf = session.csrf if session is not None else ""
    demo = bool(getattr(request.app.state, "demo_inbox_url", ""))
    nav = nav_links(user, demo_inbox=demo) if user is not None else []

    def csrf_field() -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(csrf))

    return web.templates.TemplateResponse(
        request, template,
        {"user": user, "csrf_token": csrf, "csrf_field": csrf_field, "nav": nav, "time_zone": web.time_zone,
         **(values or {})},
        status_code=status,
    )


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or request.method == "POST"


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    PAGE_ERRORS.labels(str(status)).inc()
    return render(request, "error.html", {"title": title, "detail": detail, "status": status}, status=status)


def install_error_pages(app: FastAPI) -> None:
    async def sign_in_required(request: Request, _: Exception) -> Response:
        if not _wants_html(request) or request.method != "GET":
            if request.method == "GET":
                return Response("sign in first", status_code=401)
            return RedirectResponse("/signin", status_code=303)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)

    async def csrf_refused(request: Request, _: Exception) -> Response:
        return error_page(request, 403, "Form expired or not from this site",
                          "The form was sent without its security token, or with an old one. "
                          "Go back, reload the page and send it again.")

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_page(request, exc.status, exc.title, exc.detail)

    async def page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return error_page(request, exc.status, exc.title, exc.detail)

    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
        return error_page(request, 400, "Something in the form is not right",
                          f"Check {', '.join(fields) or 'the values'} and send it again.")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_page(request, 404, "Not found", "There is no page at this address.")
        if exc.status_code == 405:
            return error_page(request, 405, "Not here", "This address does not take that kind of request.")
        return error_page(request, exc.status_code, "Not done", str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("page failed: %s %s", request.method, request.url.path)
        return error_page(request, 500, "Something went wrong on our side",
                          "The error is logged. Try again; if it keeps happening, tell your administrator.")

    app.add_exception_handler(SignInRequired, sign_in_required)
    app.add_exception_handler(CsrfRefused, csrf_refused)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(RequestValidationError, bad_input)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
