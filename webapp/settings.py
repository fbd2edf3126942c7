"""The web app's settings: `ServiceSettings` and what only the web app reads.

Built once by its command (`wpc web`, `wpc up`) with `services.settings.load_settings` and
handed to `webapp.service.WebApp`. The web app reaches no database and no broker: it reads
and acts through the listener's, the enrollment service's and the notifier's APIs, with its
own bearer token (a users-file entry with role ``webapp``, `services.auth`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.settings import ServiceSettings


class WebSettings(ServiceSettings):
    service: ClassVar[str] = "webapp"

    web_port: int = Field(default=8084, description="The web app's port")
    users_file: Path | None = Field(
        default=None, description="The users file (services/auth.py): who may sign in (password_scrypt), roles"
    )
    web_api_token: str = Field(
        default="", description="The web app's bearer token to the APIs (a users-file entry with role webapp)"
    )
    web_session_secret: str = Field(
        default="",
        description="Key that signs session cookies (32+ random characters; share it between replicas); "
        "empty: a random one per start, so a restart signs everyone out",
    )
    web_secure_cookies: bool = Field(
        default=False, description="Mark cookies Secure (set it when the app is served over TLS, e.g. behind a proxy)"
    )
    web_idle_timeout_min: float = Field(
        default=15.0, gt=0, description="Minutes without a request after which a signed-in user is signed out"
    )
    web_session_max_hours: float = Field(
        default=12.0, gt=0, description="Hours after sign-in after which the session ends, however active"
    )
    web_listener_url: str = Field(default="http://127.0.0.1:8080", description="The ADT listener's HTTP API")
    web_enrollment_url: str = Field(default="http://127.0.0.1:8081", description="The enrollment service's API")
    web_notifier_url: str = Field(default="http://127.0.0.1:8082", description="The notifier's API")
    web_api_timeout_s: float = Field(default=10.0, gt=0, description="How long a page waits for an API answer")
    web_live_poll_s: float = Field(
        default=1.0, gt=0, description="How often an open worklist asks the enrollment API whether it changed"
    )
    web_time_zone: str = Field(default="America/Los_Angeles", description="The site's time zone: times on the pages")
    web_demo_inbox_url: str = Field(
        default="", description="The demo inbox of `wpc up` (its page /demo-inbox); empty: no demo inbox"
    )
