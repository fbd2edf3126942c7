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
- at most `max_connections` at once, and no one can lock the hospitals out: who gets
  a slot is decided on accept by `adt_listener.admission` (slots reserved for known
  senders, a per-address limit, idle connections evicted when full, never one
  mid-frame or with frames unanswered); a new connection from an unknown sender must
  complete its first frame within `first_frame_timeout_s` (interface engines send at
  once after connecting; a flood of idle sockets does not);
- with TLS (1.2 or later), an optional client-certificate requirement (mutual TLS)
  names the sender; every refused handshake is logged and counted by reason
  (`adt_listener.tls`);
- flow control both ways: a sender that pipelines faster than we commit is paused at
  `_MAX_WAITING` frames, and one that does not read its ACKs gets no more of its
  frames processed until it does.

Why a Protocol and not streams: a busy connection then costs no task, future or
timeout per message; frames go from the read callback to the store, and ACKs from
the store's commit callback to the socket. On this 2-core machine that is most of
the difference between the listener and a server that only echoes ACKs.

Why we accept connections ourselves (`sock_accept`, then `connect_accepted_socket`)
instead of `loop.create_server`: admission needs the peer address before any TLS work
is spent on it, and a failed handshake must come back to us to be logged. Under
`create_server(ssl=...)` the event loop does the handshake and drops failures silently
(asyncio logs them at debug level, uvloop not at all), and `loop.start_tls` cannot be
started from `connection_made` under uvloop, which hands the first bytes (the
ClientHello) to the protocol before the upgrade runs. `connect_accepted_socket` does
the handshake and raises its error to the awaiting task, on both loops.

Shutdown (SIGTERM): stop accepting and reading, let every connection finish the frames
it has already read (their ACKs are written), close idle connections, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import socket
import ssl
from collections import Counter
from dataclasses import dataclass
from typing import cast

from adt_listener import admission, tls
from adt_listener.ingest import Ingestor, Reply
from adt_listener.mllp import Frame, FrameTooLarge, Garbage, MllpFramer, Truncated, encode
from adt_listener.senders import Sender, Senders
from services import lifecycle, metrics

log = logging.getLogger(__name__)

_MAX_WAITING = 256  # frames read but not yet handed to the store, per connection
_BACKLOG = 1024  # pending TCP connections (the kernel caps it at net.core.somaxconn)
_ACCEPT_RETRY_S = 1.0  # out of file descriptors: pause accepting rather than spin
_LOG_EVERY_S = 10.0  # refusals and evictions: one log line per reason at most this often


@dataclass(frozen=True)
class MllpLimits:
    max_frame_bytes: int = 1_048_576
    idle_timeout_s: float = 300.0
    read_timeout_s: float = 30.0
    max_connections: int = 256
    first_frame_timeout_s: float = 10.0  # unknown senders: first complete frame (TLS handshake included)
    max_connections_per_address: int = 32  # unknown senders, per source IP; 0: no limit
    reserved_slots: int = 32  # of max_connections, for senders known by address or certificate


class _Connection(asyncio.Protocol):
    """One sender's connection. States: opening (TLS handshake), idle, framing (part of
    a frame read), busy (a group at the store or frames waiting for it).

    It holds a slot from accept until `MllpServer.forget`; `known` (its sender is named
    by its address or, after the handshake, its certificate) and `framed` (it has
    completed a frame) decide how it is treated when slots run short."""

    def __init__(self, server: MllpServer, address: str, peer: str, *, known: bool) -> None:
        self._server = server
        self._loop = server.loop
        self.address = address  # peer IP
        self.peer = peer  # "ip:port", for logs
        self.known = known
        self.framed = False
        self._framer = MllpFramer(server.limits.max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._opening: asyncio.Task[None] | None = None
        self._gone = False  # refused, evicted or closed by us before its transport was ours
        self._sender: Sender | None = None
        self._waiting: list[tuple[bytes, int | None]] = []  # (payload, oversized limit or None)
        self._in_store = False
        self._write_paused = False
        self._read_paused = False
        self._eof = False
        self.accepted_at = self.last_seen = self._loop.time()
        self.frame_since: float | None = None  # when the frame being read began
        self.write_paused_since: float | None = None  # when the sender stopped reading our ACKs

    # -- asyncio callbacks

    def open(self, sock: socket.socket) -> None:
        """Make the accepted socket a transport (after the TLS handshake, with TLS)."""
        started = False

        async def opening() -> None:
            nonlocal started
            started = True
            await self._server.connect(self, sock)

        def done(_: asyncio.Task[None]) -> None:
            if not started:
                sock.close()  # cancelled before it ran: the socket is still ours to close

        self._opening = self._loop.create_task(opening(), name="mllp-open")
        self._opening.add_done_callback(done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        if self._gone:  # closed while its transport was being made
            transport.abort()
            return
        self._transport = transport
        allowed, sender = self._server.identify(transport)
        if not allowed:
            self._server.tls_refused(self, "unknown_cn", "no sender in the senders file has this certificate's CN",
                                     tls.from_getpeercert(transport.get_extra_info("peercert")))
            self._gone = True
            self._transport = None
            self._server.forget(self)
            transport.close()
            return
        if sender is not None:
            self._sender = sender
            self.known = True

    def data_received(self, data: bytes) -> None:
        if self._gone:
            return  # evicted: its slot is someone else's, and it never had a frame in hand
        now = self.last_seen = self._loop.time()
        framed = False
        for event in self._framer.feed(data):
            if isinstance(event, Frame):
                self._waiting.append((event.payload, None))
                framed = self.framed = True
            elif isinstance(event, FrameTooLarge):
                metrics.FRAMING_ERRORS.labels(kind="too_large").inc()
                self._waiting.append((event.head, self._server.limits.max_frame_bytes))
                framed = self.framed = True
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

    @property
    def opened(self) -> bool:
        """Past accept (and the TLS handshake): a transport of ours."""
        return self._transport is not None

    @property
    def last_active(self) -> float:
        return self.last_seen

    @property
    def evictable(self) -> bool:
        """Idle: closing it loses nothing (no frame begun, none unanswered, no ACK unsent)."""
        if self.busy or self.in_frame or self._eof:
            return False
        if self._transport is None:
            return self._opening is not None  # accepted, handshake under way
        return self._transport.get_write_buffer_size() == 0

    def evict(self, reason: str) -> None:
        """Give the slot up now. A connection that never sent is reset; one that did is
        closed politely (it may send again later, over a new connection)."""
        self._gone = True
        self._server.forget(self)
        if reason == "never_sent":
            self.abort()
        else:
            self.close()

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
        else:
            self._cancel_opening()

    def abort(self, reason: str | None = None) -> None:
        """Close without flushing what we still have to write (a peer that does not read
        would keep a plain close waiting forever)."""
        if reason is not None:
            metrics.FRAMING_ERRORS.labels(kind=reason).inc()
        if self._transport is not None:
            self._transport.abort()
        else:
            self._cancel_opening()

    def _cancel_opening(self) -> None:
        self._gone = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()  # connect_accepted_socket closes the socket

    def stop_reading(self) -> None:
        if self._transport is not None and not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()


class _Tally:
    """Refusals or evictions, logged one line per reason at most every `_LOG_EVERY_S`: a
    flood of connections must not become a flood of log lines (the metrics count each)."""

    def __init__(self, what: str, level: int = logging.WARNING) -> None:
        self._what = what
        self._level = level
        self._counts: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def note(self, reason: str, peer: str, now: float) -> None:
        self._counts[reason] += 1
        last = self._logged_at.get(reason)
        if last is None or now - last >= _LOG_EVERY_S:
            log.log(self._level, "mllp %s %d connection(s) (%s) since the last report; latest from %s",
                    self._what, self._counts[reason], reason, peer)
            self._counts[reason] = 0
            self._logged_at[reason] = now


def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (each address it resolves to),
    as `loop.create_server` would make them."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    bound: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in bound:
                continue
            bound.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


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
        # Reserved slots serve only senders that can be known on connecting.
        self._policy = admission.SlotPolicy(
            max_connections=limits.max_connections,
            reserved=limits.reserved_slots if senders.reserves else 0,
            per_address=limits.max_connections_per_address,
        )
        self._sockets: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._connections: set[_Connection] = set()
        self._all_gone = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._refusals = _Tally("refused")
        self._evictions = _Tally("evicted")
        self._hangups = _Tally("tls: the peer closed during the handshake on", logging.INFO)
        self.closing = False
        self.loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        assert self._sockets
        return int(self._sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        # Everything built before we accept (imported modules, the app, the engine) lives
        # as long as the process: take it out of the cyclic collector's sight, so that a
        # full collection walks only what serving created, and stalls every ACK in flight
        # for a few milliseconds instead of tens; and collect less often (services.lifecycle).
        gc.freeze()
        lifecycle.collect_less_often()
        self._sockets = _listening_sockets(host, port)
        self._acceptors = [asyncio.create_task(self._accept(s), name="mllp-accept") for s in self._sockets]
        self._sweeper = asyncio.create_task(self._sweep(), name="mllp-timeouts")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; finish frames in hand; close connections."""
        self.closing = True
        for task in self._acceptors:
            task.cancel()
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
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

    # -- accepting

    async def _accept(self, listening: socket.socket) -> None:
        while True:
            try:
                sock, address = await self.loop.sock_accept(listening)
            except ConnectionAbortedError:
                continue  # the peer gave up while queued
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("mllp: cannot accept (%s); pausing %.0f s", errno.errorcode[exc.errno], _ACCEPT_RETRY_S)
                await asyncio.sleep(_ACCEPT_RETRY_S)
                continue
            self._admit(sock, str(address[0]), int(address[1]))

    def _admit(self, sock: socket.socket, ip: str, port: int) -> None:
        peer = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        if self.closing:
            self._refuse(sock, "closing", peer)
            return
        known = self._senders.by_address(ip) is not None
        decision = admission.decide(ip, known, self._connections, self._policy)
        if isinstance(decision, admission.Refuse):
            self._refuse(sock, decision.reason, peer)
            return
        if isinstance(decision, admission.Evict):
            metrics.EVICTED_CONNECTIONS.labels(reason=decision.reason).inc()
            self._evictions.note(decision.reason, decision.victim.peer, self.loop.time())
            decision.victim.evict(decision.reason)
        conn = _Connection(self, ip, peer, known=known)
        self._connections.add(conn)
        self._all_gone.clear()
        metrics.OPEN_CONNECTIONS.inc()
        conn.open(sock)

    def _refuse(self, sock: socket.socket, reason: str, peer: str) -> None:
        metrics.REFUSED_CONNECTIONS.labels(reason=reason).inc()
        self._refusals.note(reason, peer, self.loop.time())
        sock.close()

    async def connect(self, conn: _Connection, sock: socket.socket) -> None:
        """The accepted socket as `conn`'s transport; with TLS, after the handshake, whose
        failure is logged and counted here."""
        try:
            if self._ssl is None:
                await self.loop.connect_accepted_socket(lambda: conn, sock)
                return
            deadline = self.limits.read_timeout_s
            if not conn.known:  # the handshake is part of the first frame's deadline
                deadline = min(deadline, self.limits.first_frame_timeout_s)
            async with asyncio.timeout(deadline):
                await self.loop.connect_accepted_socket(
                    lambda: conn, sock, ssl=self._ssl, ssl_handshake_timeout=2 * deadline
                )
        except asyncio.CancelledError:
            self.forget(conn)  # evicted, or the server is stopping
        except Exception as exc:  # any failure to open ends this connection only, never the server
            self.forget(conn)
            if self._ssl is None:
                log.info("mllp connection from %s could not be opened: %s", conn.peer, type(exc).__name__)
            else:
                self.tls_refused(conn, tls.refusal_reason(exc), tls.refusal_detail(exc), tls.peer_certificate_of(exc))

    def tls_refused(self, conn: _Connection, reason: str, detail: str, cert: tls.PeerCertificate | None) -> None:
        metrics.TLS_REFUSED.labels(reason=reason).inc()
        if detail == tls.PEER_CLOSED:
            # A peer that hangs up mid-handshake (a TCP health check, a port scan, a flood
            # going away) is not something to act on: summarized, not a line each.
            self._hangups.note("other", conn.peer, self.loop.time())
            return
        log.warning("mllp tls handshake refused: peer %s, reason %s (%s), %s",
                    conn.peer, reason, detail, tls.describe(cert))

    # -- called by connections

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
        shortest = min(limits.idle_timeout_s, limits.read_timeout_s, limits.first_frame_timeout_s)
        tick = min(1.0, max(0.01, shortest / 4))
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for conn in list(self._connections):
                if not conn.opened:
                    continue  # the TLS handshake has a deadline of its own
                paused = conn.write_paused_since
                if paused is not None and now - paused > limits.read_timeout_s:
                    conn.abort("write_timeout")  # a sender that sends but does not read its ACKs
                    continue
                if conn.busy:
                    continue  # waiting for us (the store), not for the sender
                if not conn.framed and not conn.known and now - conn.accepted_at > limits.first_frame_timeout_s:
                    conn.close("first_frame_timeout")
                elif conn.frame_since is not None and now - conn.frame_since > limits.read_timeout_s:
                    conn.close("read_timeout")
                elif not conn.in_frame and now - conn.last_seen > limits.idle_timeout_s:
                    conn.close("idle_timeout")
