"""HTTP side of the listener: `POST /v1/adt` and the ops endpoints.

`POST /v1/adt` takes one ER7 message as the body and answers with the ACK as the body
and the ACK code in the `X-HL7-Ack-Code` header:

    200 AA (stored) · 422 AE · 400 AR (the message is at fault) ·
    503 AR 207 (we could not store it: retry) · 401 missing/unknown credentials ·
    413 body over WPC_HTTP_MAX_BODY_BYTES · 415 not HL7 v2 text

Content-Type: one of `HL7_MEDIA_TYPES` (x-application/hl7-v2+er7, application/hl7-v2,
application/edi-hl7, text/plain), with or without a charset; a request without one is
read as ER7 too (the body says what it is: it starts with MSH).

The body limit protects the listener's memory from a sender (or anyone holding a
token): a declared Content-Length over the limit is refused before a byte of the body
is read, and a streamed (chunked) body is refused as soon as it passes the limit, so
a request never costs more than the limit. What the client still sends after the
answer is discarded by the HTTP server as it arrives (uvicorn drops body bytes of a
request already answered), not kept: the connection stays usable and, above all, the
client gets to read the 413 and its reason. Closing at once would save the bandwidth
but reset the connection under a client still sending, which then sees a bare
"connection reset" (a 2 MB message to a 1 MiB limit would be refused without a word).
A client that sends `Expect: 100-continue`, as curl does for large bodies, gets the
413 instead of the go-ahead and never sends the body.

With a senders file, a bearer token names the sender (`Authorization: Bearer ...`).
"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.ingest import Ingestor
from adt_listener.senders import Sender, Senders
from services import apidocs
from services.health import Check, ops_router

ACK_MEDIA_TYPE = "x-application/hl7-v2+er7"
HL7_MEDIA_TYPES = ("x-application/hl7-v2+er7", "application/hl7-v2", "application/edi-hl7", "text/plain")


def media_type_refusal(content_type: str | None) -> str | None:
    """Why a Content-Type is not HL7 v2 text (the 415 reason), or None when it is."""
    if content_type is None:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in HL7_MEDIA_TYPES:
        return None
    return (f"unsupported Content-Type {media_type[:80]!r}: send one HL7 v2 message in ER7 encoding as "
            f"{', '.join(HL7_MEDIA_TYPES)} (a charset parameter is allowed)")


def length_refusal(content_length: str | None, max_body_bytes: int) -> str | None:
    """Why a declared Content-Length is refused (the 413 reason), or None."""
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > max_body_bytes:
        return f"body of {int(content_length)} bytes exceeds the limit of {max_body_bytes} bytes (one HL7 v2 message)"
    return None


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The body, refused (413) as soon as it passes ``max_body_bytes``."""
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > max_body_bytes:
            raise HTTPException(413, f"body exceeds the limit of {max_body_bytes} bytes (one HL7 v2 message)")
        body += chunk
    return bytes(body)


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
        unsupported = media_type_refusal(request.headers.get("content-type"))
        if unsupported is not None:
            raise HTTPException(415, unsupported)
        too_long = length_refusal(request.headers.get("content-length"), max_body_bytes)
        if too_long is not None:
            raise HTTPException(413, too_long)
        body = await read_body(request, max_body_bytes)
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
    app = FastAPI(title="WPC ADT listener", version="0.1.0", docs_url=None, redoc_url=None)
    apidocs.install(app)  # /docs without the internet
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
    from adt_listener.intake import IntakePolicy
    from adt_listener.ops_api import ops_router

    async def never(_: object = None) -> bool:
        return False

    app = build_app(
        cast(Ingestor, None),
        Senders(),
        checks={"database": never, "broker": never},
        max_body_bytes=0,
        extra_routers=(
            feed_quality_router(lambda: cast(AsyncEngine, None)),
            ops_router(lambda: cast(AsyncEngine, None), policy=IntakePolicy(), senders_file=None,
                       service="", deadletter_topic=""),
        ),
    )
    return set(app.openapi()["paths"])
