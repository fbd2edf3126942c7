"""The MLLP server: a thin asyncio driver around `mllp.MllpFramer` and `ingest.Ingestor`.

Per connection (HL7 v2 Transport Specification, MLLP release 2):
- frames are answered in the order they arrived, also when a sender pipelines several
  before reading ACKs: every frame read in one go is handed to the store together (one
  group commit) and the ACKs are written back in order;
- an idle connection is closed after `idle_timeout_s`; a frame once started must
  complete within `read_timeout_s` (a stalled sender cannot pin a slot forever);
- at most `max_connections` at once; more are closed on accept;
- with TLS, an optional client-certificate requirement (mutual TLS) names the sender.

Shutdown (SIGTERM): stop accepting, let every connection finish the frames it has
already read (their ACKs are written), close idle connections, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from adt_listener.ingest import Ingestor, Reply
from adt_listener.mllp import Frame, FrameTooLarge, Garbage, MllpFramer, Truncated, encode
from adt_listener.senders import Sender, Senders
from services import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MllpLimits:
    max_frame_bytes: int = 1_048_576
    idle_timeout_s: float = 300.0
    read_timeout_s: float = 30.0
    max_connections: int = 256


class MllpServer:
    def __init__(
        self,
        ingestor: Ingestor,
        senders: Senders,
        *,
        limits: MllpLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ingestor = ingestor
        self._senders = senders
        self._limits = limits
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # task → busy (frames in hand)
        self._closing = False

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        # Everything built before we accept (imported modules, the app, the engine) lives
        # as long as the process: take it out of the cyclic collector's sight, so that a
        # full collection walks only what serving created, and stalls every ACK in flight
        # for a few milliseconds instead of tens.
        gc.freeze()
        self._server = await asyncio.start_server(self._accept, host, port, ssl=self._ssl, limit=2**16)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; finish frames in hand; close connections."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _done, pending = await asyncio.wait(list(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._connections) >= self._limits.max_connections:
            metrics.REFUSED_CONNECTIONS.labels(reason="closing" if self._closing else "max_connections").inc()
            writer.close()
            return
        known, sender = self._identify(writer)
        if not known:
            metrics.REFUSED_CONNECTIONS.labels(reason="unknown_certificate").inc()
            writer.close()
            return
        self._connections[task] = False
        metrics.OPEN_CONNECTIONS.inc()
        try:
            await self._serve(task, reader, writer, sender)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("mllp connection ended: %s", type(exc).__name__)
        finally:
            del self._connections[task]
            metrics.OPEN_CONNECTIONS.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _identify(self, writer: asyncio.StreamWriter) -> tuple[bool, Sender | None]:
        """(may connect, sender named by the client certificate or None without mutual TLS)."""
        if self._ssl is None or self._ssl.verify_mode != ssl.CERT_REQUIRED:
            return True, None
        cert = writer.get_extra_info("peercert") or {}
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        if cn is None:
            return False, None
        found = self._senders.by_certificate(cn)
        return found is not None or self._senders.open, found

    async def _serve(
        self,
        task: asyncio.Task[None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sender: Sender | None,
    ) -> None:
        framer = MllpFramer(self._limits.max_frame_bytes)
        while not self._closing:
            timeout = self._limits.read_timeout_s if framer.in_frame else self._limits.idle_timeout_s
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every read in a Task of
                # its own, a cost paid once per message on a busy connection.
                async with asyncio.timeout(timeout):
                    data = await reader.read(65536)
            except TimeoutError:
                metrics.FRAMING_ERRORS.labels(kind="read_timeout" if framer.in_frame else "idle_timeout").inc()
                return
            if not data:
                if framer.in_frame:
                    metrics.FRAMING_ERRORS.labels(kind="eof_in_frame").inc()
                return
            self._connections[task] = True
            work: list[Coroutine[Any, Any, Reply]] = []
            for event in framer.feed(data):
                if isinstance(event, Frame):
                    work.append(self._ingestor.receive(event.payload, channel="mllp", sender=sender))
                elif isinstance(event, FrameTooLarge):
                    metrics.FRAMING_ERRORS.labels(kind="too_large").inc()
                    work.append(self._ingestor.receive(
                        event.head, channel="mllp", sender=sender, oversized=self._limits.max_frame_bytes
                    ))
                elif isinstance(event, Garbage):
                    metrics.FRAMING_ERRORS.labels(kind="garbage").inc()
                elif isinstance(event, Truncated):
                    metrics.FRAMING_ERRORS.labels(kind="truncated").inc()
            if len(work) == 1:
                # The usual case (a sender waits for each ACK): no Task needed.
                reply = await work[0]
                if reply.send_ack:
                    writer.write(encode(reply.ack))
            elif work:
                # Pipelined frames go to the store together (one group commit); awaiting
                # in arrival order writes the ACKs in arrival order, whatever finishes first.
                pending = [asyncio.ensure_future(w) for w in work]
                for fut in pending:
                    reply = await fut
                    if reply.send_ack:
                        writer.write(encode(reply.ack))
            if work:
                await writer.drain()
            self._connections[task] = False
