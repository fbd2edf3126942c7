"""Real receivers for the notifier's channels, run on the test's own event loop.

- `HttpReceiver`: an HTTP/1.1 server on 127.0.0.1 (h11 does the framing: Content-Length and
  chunked bodies, keep-alive, pipelining refused by h11 itself). It records every request,
  dedupes deliveries by ``Idempotency-Key`` the way a partner should, verifies the webhook
  signature when given the secret (answering 401 when it is wrong, as a partner would), and
  misbehaves on request through ``mode``.
- `SmtpReceiver`: aiosmtpd's SMTP protocol on 127.0.0.1, recording parsed messages, able to
  answer 451 or 550 at RCPT or DATA, for everyone or for chosen addresses.

Both are async context managers (``async with HttpReceiver() as hooks:``) and have
``start()`` / ``stop()`` and ``wait_for(n, timeout)``. Nothing here blocks the loop and no
thread is started, so a test awaits the channel and the receiver side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, Self

import h11
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.channels.webhook import verify

LOOPBACK = "127.0.0.1"
_READ = 65536


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes
    signature_ok: bool | None  # None when nothing was checked (no secret / no bearer token configured)
    status: int = 0  # what was answered; 0 while pending or when the client went away first
    received_at: float = field(default_factory=time.monotonic)


class HttpReceiver:
    """A partner's HTTP endpoint: webhooks on any path, FHIR messages on ``.../$process-message``.

    Webhook requests are checked against ``secret`` (HMAC, `webhook.verify`); FHIR messages use
    bearer tokens instead, checked against ``bearer`` when set. A failed check answers 401.

    ``mode``: ``"ok"`` (200), ``"slow"`` (sleep ``slow_s`` seconds, then 200), any status as
    digits (``"500"``, ``"404"``, ``"429"``), or ``"down"``: setting it stops listening and
    drops open connections at once; ``await start()`` listens again on the same port.
    """

    def __init__(
        self,
        *,
        secret: str | Iterable[str] | None = None,
        bearer: str | None = None,
        slow_s: float = 2.0,
        tolerance_s: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = [secret] if isinstance(secret, str) else (list(secret) if secret is not None else None)
        self.bearer = bearer
        self.slow_s = slow_s
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.response_body = b'{"ok":true}'
        self.response_type = "application/json"
        self.requests: list[ReceivedRequest] = []
        self.unique: dict[str, bytes] = {}  # Idempotency-Key (or body hash) → body, 2xx answers only
        self._mode = "ok"
        self._port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outage = asyncio.Event()  # set when going down: wakes handlers sleeping in "slow"
        self._changed = asyncio.Event()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in ("ok", "slow", "down") and not (value.isdigit() and len(value) == 3):
            raise ValueError(f"unknown mode {value!r}")
        self._mode = value
        if value == "down":
            self._go_down()

    async def start(self) -> None:
        if self._server is not None:
            return
        # The first start picks a free port; later ones reuse it (SO_REUSEADDR is asyncio's
        # default on POSIX, so sockets of the old server in TIME_WAIT do not block the bind).
        self._server = await asyncio.start_server(self._serve, LOOPBACK, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        if self._mode == "down":
            self._mode = "ok"
        self._outage = asyncio.Event()

    async def stop(self) -> None:
        """Down, and wait until every connection handler has finished."""
        self._mode = "down"
        server = self._go_down()
        tasks = list(self._tasks)
        if tasks:
            # Their connections are aborted and slow answers woken: they end on their own. Not
            # cancelled: on 3.11 asyncio's stream callback logs a cancelled handler as an error.
            await asyncio.wait(tasks, timeout=5.0)
        if server is not None:
            await server.wait_closed()

    async def wait_for(self, n: int, timeout: float = 5.0) -> dict[str, bytes]:  # noqa: ASYNC109 (see below)
        """Wait until ``n`` distinct deliveries were answered 2xx; AssertionError on timeout.

        A ``timeout`` argument rather than the caller's ``asyncio.timeout``: on failure the
        message says how many of how many arrived, which a bare TimeoutError would not."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.unique) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.unique)} of {n} deliveries after {timeout} s ({len(self.requests)} requests)"
            ) from None
        return dict(self.unique)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _go_down(self) -> asyncio.Server | None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stops listening now; the port refuses connections from here on
        for writer in list(self._writers):
            writer.transport.abort()  # an outage, not a goodbye: no FIN-and-wait
        self._outage.set()
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_event(conn, reader)
                if not isinstance(request, h11.Request):
                    return  # ConnectionClosed: the client is done with this connection
                body = bytearray()
                while True:
                    event = await _next_event(conn, reader)
                    if isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                if self._mode == "down":
                    writer.transport.abort()  # accepted just before going down: the outage swallows it
                    return
                status = await self._answer(request, bytes(body))
                payload = self.response_body
                headers = [("content-type", self.response_type), ("content-length", str(len(payload)))]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # h11 wants the connection closed (Connection: close, HTTP/1.0)
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            # Not HTTP, or a broken request: say so once, as a real server would, then hang up.
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
                    response = h11.Response(status_code=exc.error_status_hint, headers=[("content-length", "0")])
                    writer.write(conn.send(response) or b"")
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
        except ConnectionError:
            return  # a client that gave up (timeouts) or went away: nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, request: h11.Request, body: bytes) -> int:
        headers = {name.decode("ascii").lower(): value.decode("latin-1") for name, value in request.headers}
        path = request.target.decode("ascii")
        signature_ok: bool | None = None
        if path.split("?")[0].endswith("/$process-message"):
            if self.bearer is not None:
                expected = f"Bearer {self.bearer}".encode()
                signature_ok = hmac.compare_digest(headers.get("authorization", "").encode("latin-1"), expected)
        elif self.secret is not None:
            header = headers.get("x-wpc-signature")
            signature_ok = verify(self.secret, header, body, self.clock(), self.tolerance_s)
        record = ReceivedRequest(
            method=request.method.decode("ascii"),
            path=path,
            headers=headers,
            body=body,
            signature_ok=signature_ok,
        )
        self.requests.append(record)
        self._changed.set()
        mode = self._mode
        if mode == "slow":
            outage = self._outage
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(outage.wait(), self.slow_s)
            if outage.is_set():
                raise ConnectionAbortedError("receiver went down before answering")
            status = 200
        elif mode == "ok":
            status = 200
        else:
            status = int(mode)
        if signature_ok is False:
            status = 401
        if 200 <= status < 300:
            key = headers.get("idempotency-key") or "sha256:" + hashlib.sha256(body).hexdigest()
            self.unique.setdefault(key, body)
        record.status = status
        self._changed.set()
        return status


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ))  # b"" tells h11 the peer closed
            continue
        return event


SmtpStage = Literal["rcpt", "data"]
_REPLIES = {
    # RFC 5321 §4.2.2 codes with RFC 3463 enhanced status codes, as real MTAs send them.
    421: "421 4.3.2 Service not available, closing channel",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Local error in processing, try again later",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.1.1 Mailbox unavailable",
    552: "552 5.3.4 Message too big",
    554: "554 5.7.1 Transaction failed",
}


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class SmtpReceiver:
    """An SMTP relay. ``reply`` (e.g. 451 or 550) refuses at stage ``reply_at`` ("rcpt" or
    "data"); ``refuse`` maps single addresses to a code refused at RCPT."""

    def __init__(self) -> None:
        self.mails: list[ReceivedMail] = []
        self.reply: int | None = None
        self.reply_at: SmtpStage = "rcpt"
        self.refuse: dict[str, int] = {}
        self._port = 0
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []
        self._changed = asyncio.Event()

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def messages(self) -> list[EmailMessage]:
        return [mail.message for mail in self.mails]

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, LOOPBACK, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in self._sessions:
            if session.transport is not None:
                session.transport.close()  # connection_lost cancels the session's handler task
        self._sessions.clear()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the cancelled handler tasks unwind before the test moves on

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[EmailMessage]:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                while len(self.mails) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{len(self.mails)} of {n} messages after {timeout} s") from None
        return self.messages

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _protocol(self) -> SMTP:
        # hostname given: aiosmtpd would otherwise ask the resolver for our FQDN on every connection.
        session = SMTP(_Handler(self), hostname="receiver.test", ident="wpc test relay")
        self._sessions.append(session)
        return session

    def _refusal(self, stage: SmtpStage, address: str | None = None) -> str | None:
        if address is not None and address in self.refuse:
            return _REPLIES.get(self.refuse[address], f"{self.refuse[address]} refused")
        if self.reply is not None and self.reply_at == stage:
            return _REPLIES.get(self.reply, f"{self.reply} refused")
        return None

    def _received(self, envelope: Envelope) -> None:
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(ReceivedMail(envelope.mail_from or "", list(envelope.rcpt_tos), message))
        self._changed.set()


class _Handler:
    """aiosmtpd handler hooks (aiosmtpd calls ``handle_<VERB>``)."""

    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.receiver._refusal("rcpt", address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        refusal = self.receiver._refusal("data")
        if refusal is not None:
            return refusal
        self.receiver._received(envelope)
        return "250 2.0.0 Queued"


async def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released): connections are refused."""
    server = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
