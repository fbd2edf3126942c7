"""The demo inbox `wpc up` runs when no notification configuration is set: a local receiver
that plays every care team and practice, so a newcomer sees notifications arrive.

It checks each webhook's signature (`channels.webhook.verify`), accepts FHIR messages at
``/fhir/$process-message``, dedupes on ``Idempotency-Key`` as a real receiver should, and
lists what it got at ``GET /`` (newest first, in memory only; the demo's data is synthetic).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from notifier.channels.webhook import verify
from notifier.config import NotifyConfig, config_from_text

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "notify" / "demo-notify.yaml"
SECRET_ENV = "WPC_DEMO_INBOX_SECRET"


def demo_config(inbox_url: str) -> NotifyConfig:
    return config_from_text(DEMO_CONFIG.read_text(encoding="utf-8").replace("{inbox}", inbox_url.rstrip("/")))


def inbox_app(secret: str, keep: int = 200) -> FastAPI:
    app = FastAPI(title="WPC demo inbox")
    received: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
    seen: set[str] = set()

    def _record(recipient: str, request: Request, body: bytes) -> None:
        key = request.headers.get("idempotency-key", "")
        if key in seen:
            return
        seen.add(key)
        received.appendleft({"recipient": recipient, "idempotency_key": key, "received_at": time.time(),
                             "content_type": request.headers.get("content-type"), "body": json.loads(body)})

    @app.post("/hooks/{recipient}")
    async def hook(recipient: str, request: Request) -> dict[str, str]:
        body = await request.body()
        if not verify(secret, request.headers.get("x-wpc-signature"), body, time.time()):
            raise HTTPException(401, "bad signature")
        _record(recipient, request, body)
        return {"status": "received"}

    @app.post("/fhir/$process-message")
    async def fhir(request: Request) -> dict[str, str]:
        body = await request.body()
        _record("demo-clinic", request, body)
        return {"resourceType": "OperationOutcome"}

    @app.get("/")
    async def index() -> list[dict[str, Any]]:
        return list(received)

    return app
