"""The demo inbox `wpc up` runs when no notification configuration is set: a local receiver
that plays every care team and practice, so a newcomer sees notifications arrive.

It receives what the demo configuration (``deploy/notify/demo-notify.yaml``) sends:

- webhooks at ``/hooks/{recipient}``, each signature checked (`channels.webhook.verify`):
  a wrong one gets 401 and is not kept;
- FHIR messages at ``/fhir/$process-message`` (the demo clinic);
- e-mail on an SMTP port of its own (the e-mail clinic), one message per recipient address.

It dedupes on ``Idempotency-Key`` (the Message-ID for mail) as a real receiver should, and
lists what it got, newest first, in memory only (the demo's data is synthetic), at
``GET /v1/received``: one JSON object per message with its recipient, channel, kind(s),
time and content. ``GET /`` answers the same for older scripts; the web app's demo inbox
page reads it and shows it as cards.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import email
import email.policy
import json
import logging
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, HTTPException, Request

from notifier.channels.webhook import verify
from notifier.config import NotifyConfig, config_from_text

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "notify" / "demo-notify.yaml"
SECRET_ENV = "WPC_DEMO_INBOX_SECRET"
MAIL_DOMAIN = "demo.invalid"  # RFC 2606: never a real address


def demo_config(
    inbox_url: str, *, smtp_port: int = 25, digest_at: dt.time = dt.time(7, 30), portal_url: str | None = None,
) -> NotifyConfig:
    """The demo notification configuration pointing at this inbox. ``portal_url`` is where the
    e-mails' link goes (the web app when it runs; else the inbox)."""
    inbox = inbox_url.rstrip("/")
    text = (DEMO_CONFIG.read_text(encoding="utf-8")
            .replace("{inbox}", inbox)
            .replace("{portal}", portal_url or f"{inbox}/")
            .replace("{smtp_port}", str(smtp_port))
            .replace("{digest_at}", digest_at.strftime("%H:%M:%S")))
    return config_from_text(text, str(DEMO_CONFIG))


def _kinds(channel: str, body: Any) -> list[str]:
    """The notice kinds a message carries (candidate, admit, enrolled, ...), for the listing."""
    if channel == "webhook" and isinstance(body, dict):
        return [str(n.get("event")) for n in body.get("notices", []) if isinstance(n, dict)]
    if channel == "fhir" and isinstance(body, dict):
        for entry in body.get("entry", []):
            resource = entry.get("resource", {}) if isinstance(entry, dict) else {}
            if resource.get("resourceType") == "MessageHeader":
                event = resource.get("eventCoding", {})
                return [str(event.get("code") or event.get("display") or "notification")]
        return ["notification"]
    return []


class DemoInbox:
    """What the demo inbox received (newest first, at most ``keep``) and its two doors: an
    HTTP app (webhooks, FHIR, the listing) and an SMTP server (`start_smtp`)."""

    def __init__(self, secret: str, keep: int = 500) -> None:
        self._secret = secret
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._seen: set[str] = set()
        self._smtp: asyncio.Server | None = None
        self._sessions: list[SMTP] = []
        self.smtp_port = 0
        # aiosmtpd logs every SMTP command at INFO, addresses included: a line per verb is noise.
        logging.getLogger("mail.log").setLevel(logging.WARNING)

    def record(self, recipient: str, channel: str, key: str, content_type: str | None, body: Any,
               subject: str | None = None) -> bool:
        """Keep one message; False when its key was seen already (a retry of one we have)."""
        if key in self._seen:
            return False
        self._seen.add(key)
        self.received.appendleft({
            "recipient": recipient, "channel": channel, "kinds": _kinds(channel, body),
            "idempotency_key": key, "received_at": dt.datetime.now(dt.UTC).isoformat(),
            "content_type": content_type, "subject": subject, "body": body,
        })
        return True

    def app(self) -> FastAPI:
        app = FastAPI(title="WPC demo inbox", docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/hooks/{recipient}")
        async def hook(recipient: str, request: Request) -> dict[str, str]:
            body = await request.body()
            if not verify(self._secret, request.headers.get("x-wpc-signature"), body, time.time()):
                raise HTTPException(401, "bad signature")
            self.record(recipient, "webhook", request.headers.get("idempotency-key", ""),
                        request.headers.get("content-type"), json.loads(body))
            return {"status": "received"}

        @app.post("/fhir/$process-message")
        async def fhir(request: Request) -> dict[str, str]:
            body = await request.body()
            self.record("demo-clinic", "fhir", request.headers.get("idempotency-key", ""),
                        request.headers.get("content-type"), json.loads(body))
            return {"resourceType": "OperationOutcome"}

        @app.get("/v1/received")
        async def listing() -> list[dict[str, Any]]:
            return list(self.received)

        @app.get("/")
        async def index() -> list[dict[str, Any]]:
            return list(self.received)

        return app

    async def start_smtp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for the e-mail channel; the port it got."""
        loop = asyncio.get_running_loop()
        self._smtp = await loop.create_server(self._protocol, host, port)
        self.smtp_port = int(self._smtp.sockets[0].getsockname()[1])
        return self.smtp_port

    async def stop_smtp(self) -> None:
        server, self._smtp = self._smtp, None
        if server is None:
            return
        server.close()
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()
        self._sessions.clear()
        await server.wait_closed()

    def _protocol(self) -> SMTP:
        # hostname given: aiosmtpd would otherwise ask the resolver for our name on each connection.
        session = SMTP(_MailHandler(self), hostname="inbox.demo.invalid", ident="wpc demo inbox")
        self._sessions = [s for s in self._sessions if s.transport is not None and not s.transport.is_closing()]
        self._sessions.append(session)
        return session

    def mail(self, envelope: Envelope) -> None:
        raw = envelope.original_content or envelope.content or b""
        message = email.message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(),
                                           policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        part = message.get_body(("plain",))
        text = part.get_content() if part is not None else ""
        key = str(message.get("Message-ID", ""))
        for address in envelope.rcpt_tos:
            recipient = address.split("@", 1)[0]
            self.record(recipient, "email", f"{key}\x1f{address}", "text/plain", text,
                        subject=str(message.get("Subject", "")))


class _MailHandler:
    """aiosmtpd's handler hooks (it calls ``handle_<VERB>``): every message is taken."""

    def __init__(self, inbox: DemoInbox) -> None:
        self._inbox = inbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._inbox.mail(envelope)
        return "250 OK"


def inbox_app(secret: str, keep: int = 500) -> FastAPI:
    """An inbox's HTTP app alone (no e-mail), for tests that need only webhooks and FHIR."""
    return DemoInbox(secret, keep).app()
