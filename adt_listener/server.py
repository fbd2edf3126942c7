"""The MLLP server: an asyncio Protocol around `mllp.MllpFramer` and `ingest.Ingestor`.

Per connection (HL7 v2 Transport Specification, MLLP release 2):
- frames are answered in the order they arrived, also when a sender pipelines several
  before reading ACKs. A connection hands the store the frames it holds as one group
  (one commit, in order) and the next ones only after that group's ACKs are written,
  so a sender's messages are committed, and published, in the order it sent them;
- a frame once started must be complete within `read_timeout_s`, and so must a TLS
  handshake; a connection with nothing in hand is closed after `idle_timeout_s` of
  silence, and one whose sender has not read its ACKs for `read_timeout_s` (our
  writes are paused) is aborted: a stalled sender cannot pin a slot forever. One timer
  per server checks every connection;
- at most `max_connections` at once; more are closed on accept;
- with TLS, an optional client-certificate requirement (mutual TLS) names the sender;
- flow control both ways: a sender that pipelines faster than we commit is paused at
  `_MAX_WAITING` frames, and one that does not read its ACKs gets no more of its
  frames processed until it does.

Why a Protocol and not streams: a busy connection then costs no task, future or
timeout per message; frames go from the read callback to the store, and ACKs from
the store's commit callback to the socket. On this 2-core machine that is most of
the difference between the listener and a server that only echoes ACKs.

Shutdown (SIGTERM): stop accepting and reading, let every connection finish the frames
it has already read (their ACKs are written), close idle connections, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from dataclasses import dataclass
from typing import cast

from adt_listener.ingest import Ingestor, Reply
from adt_listener.mllp import Frame, FrameTooLarge, Garbage, MllpFramer, Truncated, encode
from adt_listener.senders import Sender, Senders
from services import metrics

log = logging.getLogger(__name__)

_MAX_WAITING = 256  # frames read but not yet handed to the store, per connection


@dataclass(frozen=True)
class MllpLimits:
    max_frame_bytes: int = 1_048_576
    idle_timeout_s: float = 300.0
    read_timeout_s: float = 30.0
    max_connections: int = 256


class _Connection(asyncio.Protocol):
    """One sender's connection. States: idle, framing (part of a frame read), busy (a
    group at the store or frames waiting for it)."""

    def __init__(self, server: MllpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._framer = MllpFramer(server.limits.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._sender: Sender | None = None
        self._waiting: list[tuple[bytes, int | None]] = []  # (payload, oversized limit or None)
        self._in_store = False
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self.last_seen = self._loop.time()
        self.frame_since: float | None = None  # when the frame being read began
        self.write_paused_since: float | None = None  # when the sender stopped reading our ACKs

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._transport = transport
        refusal, self._sender = self._server.admit(self, transport)
        if refusal is not None:
            metrics.REFUSED_CONNECTIONS.labels(reason=refusal).inc()
            self._transport = None
            transport.close()

    def data_received(self, data: bytes) -> None:
        now = self.last_seen = self._loop.time()
        framed = False
        for event in self._framer.feed(data):
            if isinstance(event, Frame):
                self._waiting.append((event.payload, None))
                framed = True
            elif isinstance(event, FrameTooLarge):
                metrics.FRAMING_ERRORS.labels(kind="too_large").inc()
                self._waiting.append((event.head, self._server.limits.max_frame_bytes))
                framed = True
            elif isinstance(event, Garbage):
                metrics.FRAMING_ERRORS.labels(kind="garbage").inc()
            elif isinstance(event, Truncated):
                metrics.FRAMING_ERRORS.labels(kind="truncated").inc()
                framed = True  # a new block began
        if not self._framer.in_frame:
            self.frame_since = None
        elif framed or self.frame_since is None:
            self.frame_since = now
        if len(self._waiting) >= _MAX_WAITING and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._pump()

    def eof_received(self) -> bool:
        if self._framer.in_frame:
            metrics.FRAMING_ERRORS.labels(kind="eof_in_frame").inc()
        self._eof = True
        # Keep our side open until the frames in hand are answered (a half-closed peer
        # still reads); TLS transports close regardless and their ACKs are lost, which
        # the sender, having closed first, must expect.
        return self.busy

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("mllp connection ended: %s", type(exc).__name__)
        self._transport = None
        self._server.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_paused_since = self._loop.time()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_paused_since = None
        self._pump()

    # -- the work

    @property
    def busy(self) -> bool:
        return self._in_store or bool(self._waiting)

    @property
    def in_frame(self) -> bool:
        return self._framer.in_frame

    def _pump(self) -> None:
        """Hand the waiting frames to the store, unless a group is already there."""
        if self._in_store or not self._waiting or self._write_paused or self._transport is None:
            return
        frames, self._waiting = self._waiting, []
        ingestor = self._server.ingestor
        sender = self._sender
        decisions = [
            ingestor.decide(payload, channel="mllp", sender=sender, oversized=oversized)
            for payload, oversized in frames
        ]
        self._in_store = True
        ingestor.submit(decisions, self._answered)

    def _answered(self, replies: list[Reply]) -> None:
        self._in_store = False
        transport = self._transport
        if transport is None:
            return  # the peer left: it will resend, and a resend is no duplicate
        out = b"".join([encode(r.ack) for r in replies if r.send_ack])
        if out:
            transport.write(out)
        self.last_seen = self._loop.time()
        if self._read_paused and not self._server.closing and len(self._waiting) < _MAX_WAITING // 2:
            self._read_paused = False
            transport.resume_reading()
        self._pump()
        if not self.busy and (self._eof or self._server.closing):
            transport.close()

    def close(self, reason: str | None = None) -> None:
        if reason is not None:
            metrics.FRAMING_ERRORS.labels(kind=reason).inc()
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str | None = None) -> None:
        """Close without flushing what we still have to write (a peer that does not read
        would keep a plain close waiting forever)."""
        if reason is not None:
            metrics.FRAMING_ERRORS.labels(kind=reason).inc()
        if self._transport is not None:
            self._transport.abort()

    def stop_reading(self) -> None:
        if self._transport is not None and not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()


class MllpServer:
    def __init__(
        self,
        ingestor: Ingestor,
        senders: Senders,
        *,
        limits: MllpLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.limits = limits
        self._senders = senders
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all_gone = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False
        self.loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        # Everything built before we accept (imported modules, the app, the engine) lives
        # as long as the process: take it out of the cyclic collector's sight, so that a
        # full collection walks only what serving created, and stalls every ACK in flight
        # for a few milliseconds instead of tens.
        gc.freeze()
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=self._ssl,
            ssl_handshake_timeout=self.limits.read_timeout_s if self._ssl is not None else None,
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="mllp-timeouts")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; finish frames in hand; close connections."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.stop_reading()
            if not conn.busy:
                conn.close()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_gone.wait()
            for conn in list(self._connections):
                conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            await self._server.wait_closed()

    # -- called by connections

    def admit(self, conn: _Connection, transport: asyncio.Transport) -> tuple[str | None, Sender | None]:
        """(None if the connection may stay, else the reason it is refused; the sender its
        client certificate names, None without mutual TLS)."""
        if self.closing:
            return "closing", None
        if len(self._connections) >= self.limits.max_connections:
            return "max_connections", None
        known, sender = self.identify(transport)
        if not known:
            return "unknown_certificate", None
        self._connections.add(conn)
        self._all_gone.clear()
        metrics.OPEN_CONNECTIONS.inc()
        return None, sender

    def forget(self, conn: _Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            metrics.OPEN_CONNECTIONS.dec()
        if not self._connections:
            self._all_gone.set()

    def identify(self, transport: asyncio.Transport) -> tuple[bool, Sender | None]:
        """(may connect, sender named by the client certificate or None without mutual TLS)."""
        if self._ssl is None or self._ssl.verify_mode != ssl.CERT_REQUIRED:
            return True, None
        cert = transport.get_extra_info("peercert") or {}
        cn = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
        if cn is None:
            return False, None
        found = self._senders.by_certificate(cn)
        return found is not None or self._senders.open, found

    # -- timeouts

    async def _sweep(self) -> None:
        limits = self.limits
        tick = min(1.0, max(0.01, min(limits.idle_timeout_s, limits.read_timeout_s) / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for conn in list(self._connections):
                paused = conn.write_paused_since
                if paused is not None and now - paused > limits.read_timeout_s:
                    conn.abort("write_timeout")  # a sender that sends but does not read its ACKs
                    continue
                if conn.busy:
                    continue  # waiting for us (the store), not for the sender
                if conn.frame_since is not None and now - conn.frame_since > limits.read_timeout_s:
                    conn.close("read_timeout")
                elif not conn.in_frame and now - conn.last_seen > limits.idle_timeout_s:
                    conn.close("idle_timeout")
