"""The web app's composition root: users, API client, session key, app and HTTP server,
built once from `WebSettings` and run as one async context (like the other services).
"""

from __future__ import annotations

import logging
import secrets
from types import TracebackType

from services.auth import Users, load_users
from services.configfile import ConfigError
from services.httpserver import HttpServer
from webapp.api import ApiClient
from webapp.app import create_app
from webapp.settings import WebSettings

log = logging.getLogger(__name__)


class WebApp:
    def __init__(self, settings: WebSettings, *, users: Users | None = None, api_token: str | None = None) -> None:
        """``users``/``api_token``: given by `wpc up` in demo mode; otherwise from the
        settings (WPC_USERS_FILE, WPC_WEB_API_TOKEN)."""
        token = api_token if api_token is not None else settings.web_api_token
        if not token:
            raise ConfigError("WPC_WEB_API_TOKEN is empty: give the web app the token of a users-file entry "
                              "with role webapp")
        self.settings = settings
        self.users = users or (load_users(settings.users_file, setting="WPC_USERS_FILE")
                               if settings.users_file else Users({}))
        self.api = ApiClient({"listener": settings.web_listener_url, "enrollment": settings.web_enrollment_url,
                              "notifier": settings.web_notifier_url}, token, timeout_s=settings.web_api_timeout_s)
        secret = settings.web_session_secret or secrets.token_urlsafe(32)
        self.app = create_app(settings, self.users, self.api, secret)
        self.http = HttpServer(self.app, settings.http_host, settings.web_port)

    async def __aenter__(self) -> WebApp:
        await self.http.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.http.stop()
        await self.api.aclose()
