"""The web app's FastAPI application: pages, static files, the ops endpoints.

`create_app` only assembles; what it needs (users, the API client, the session key) is
built by the composition root, `webapp.service.WebApp`, and handed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jinja2
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from services.auth import Users
from services.health import Check, ops_router
from webapp.api import UPSTREAMS, ApiClient
from webapp.pages import auth, candidate, feeds, measures, worklist
from webapp.sessions import SessionCodec
from webapp.settings import WebSettings
from webapp.views.timefmt import local_time
from webapp.web import STATIC_DIR, TEMPLATES_DIR, Context, csrf_guard, install_error_pages, session_middleware


def create_app(settings: WebSettings, users: Users, api: ApiClient, secret: str,
               *, clock: Callable[[], float] = time.time) -> FastAPI:
    app = FastAPI(title="WPC care team web app", version="0.1.0", docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(csrf_guard)])
    templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                                                       autoescape=True))
    templates.env.filters["local_time"] = lambda value, fmt="%a %d %b %H:%M": local_time(
        value, settings.web_time_zone, fmt)
    app.state.web = Context(
        users=users, api=api,
        codec=SessionCodec(secret, idle_s=settings.web_idle_timeout_min * 60,
                           max_s=settings.web_session_max_hours * 3600),
        templates=templates, secure_cookies=settings.web_secure_cookies, time_zone=settings.web_time_zone,
        live_poll_s=settings.web_live_poll_s, clock=clock,
    )
    app.middleware("http")(session_middleware)
    install_error_pages(app)

    def upstream_check(name: str) -> Check:
        async def check() -> bool:
            return await api.ready(name)
        return check

    checks = {name: upstream_check(name) for name in UPSTREAMS}
    app.include_router(ops_router(checks, ingest_checks=()))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(auth.router)
    app.include_router(worklist.router)
    app.include_router(feeds.router)
    app.include_router(candidate.router)
    app.include_router(measures.router)
    app.state.demo_inbox_url = settings.web_demo_inbox_url
    return app
