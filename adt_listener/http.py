"""HTTP side of the listener: `POST /v1/adt` and the ops endpoints.

`POST /v1/adt` takes one ER7 message as the body (Content-Type
x-application/hl7-v2+er7, text/plain or application/hl7-v2) and answers with the ACK
as the body and the ACK code in the `X-HL7-Ack-Code` header:

    200 AA (stored) · 422 AE · 400 AR (the message is at fault) ·
    503 AR 207 (we could not store it: retry) · 401 missing/unknown credentials ·
    413 body over the frame limit

With a senders file, a bearer token names the sender (`Authorization: Bearer ...`).
"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.ingest import Ingestor
from adt_listener.senders import Sender, Senders
from services.health import Check, ops_router

ACK_MEDIA_TYPE = "x-application/hl7-v2+er7"


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def adt_router(ingestor: Ingestor, senders: Senders, *, max_body_bytes: int) -> APIRouter:
    router = APIRouter(tags=["adt"])

    @router.post("/v1/adt", responses={200: {"content": {ACK_MEDIA_TYPE: {}}}})
    async def receive_adt(request: Request) -> Response:
        sender: Sender | None = None
        if not senders.open:
            token = _bearer(request)
            sender = senders.by_token(token) if token else None
            if sender is None:
                raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        body = await request.body()
        if len(body) > max_body_bytes:
            raise HTTPException(413, f"message exceeds {max_body_bytes} bytes")
        if not body.strip():
            raise HTTPException(400, "empty body: expected one HL7 v2 message in ER7 encoding")
        reply = await ingestor.receive(body, channel="http", sender=sender)
        if not reply.stored:
            status = 503
        else:
            status = {"AA": 200, "AE": 422}.get(reply.ack_code, 400)
        headers = {"X-HL7-Ack-Code": reply.ack_code}
        if reply.duplicate:
            headers["X-WPC-Duplicate"] = "1"
        return Response(reply.ack, status_code=status, media_type=ACK_MEDIA_TYPE, headers=headers)

    return router


def build_app(
    ingestor: Ingestor,
    senders: Senders,
    *,
    checks: dict[str, Check],
    max_body_bytes: int,
    extra_routers: tuple[APIRouter, ...] = (),
) -> FastAPI:
    app = FastAPI(title="WPC ADT listener", version="0.1.0")
    app.include_router(ops_router(checks, ingest_checks=("database",)))
    app.include_router(adt_router(ingestor, senders, max_body_bytes=max_body_bytes))
    for router in extra_routers:
        app.include_router(router)
    return app


def route_paths() -> set[str]:
    """Every HTTP path the listener serves (deploy tests check probes against it).

    Read off an app built by `build_app` with the same routers as `adt_listener.service`;
    routes touch their dependencies only per request, so placeholders do here.
    """
    from adt_listener.feed_report import router as feed_quality_router

    async def never(_: object = None) -> bool:
        return False

    app = build_app(
        cast(Ingestor, None),
        Senders(),
        checks={"database": never, "broker": never},
        max_body_bytes=0,
        extra_routers=(feed_quality_router(lambda: cast(AsyncEngine, None)),),
    )
    return set(app.openapi()["paths"])
