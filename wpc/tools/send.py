"""`wpc send FILE...`: send HL7 v2 files over MLLP and print one line per ACK.

Also home of `MllpClient`, the asyncio MLLP client that tests and benchmarks reuse.
Like the server, it is a thin driver around the sans-I/O framer in
`adt_listener.mllp`: it writes `encode(message)` and feeds what it reads to an
`MllpFramer` until a frame (the ACK) comes out.

The command speaks the original acknowledgment mode of HL7 v2 (chapter 2, section
2.9.2): one message, then wait for its ACK (``--timeout``, 30 s), before the next one,
over one connection. Enhanced mode (section 2.9.3) is followed where it changes what a
sender may expect: a message whose MSH-15 (accept acknowledgment type, HL7 table 0155)
is ER (acknowledge errors only) or NE (never) gets no ACK when it is taken, so it is
sent, an error ACK is awaited for a short ``--grace`` (0.5 s) only, and it counts as
"sent, no ACK expected"; an error ACK arriving later is paired with it by MSA-2 and
reported as a late answer. AL and SU are awaited like original mode. MLLP release 2
commit acknowledgments (the single bytes <ACK>/<NAK> as a block) are not spoken.

An ACK whose MSA-3 starts with "retransmission" is the listener's stored answer to a
message it had already taken (a duplicate): shown as "AA (duplicate: stored
acknowledgement)".

Output holds file names, MSH-10 (message control id), MSA-1 and the ERR locations,
codes and texts the receiver wrote; never other message content, which may be PHI. The
last line sums up: sent, AA, AE, AR (enhanced mode's CA, CE, CR counted with them),
duplicates (also counted under their code), no ACK expected, unanswered.

Exit status: 0 when every message got AA / CA or was sent with no ACK expected; 1 when
any got AE, AR, CE, CR, an unreadable ACK or one for another control id, or no ACK in
time; 2 for usage and connection errors (unreadable file, refused connection, TLS
failure, connection lost), with a message on stderr.

Without ``--port``: WPC_MLLP_PORT when set, else the MLLP port of the `wpc up` running
with this WPC_DATA_DIR (its run.json, `services.runinfo`), else 2575.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl as ssl_module
import sys
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from adt_listener.er7 import split_messages
from adt_listener.errors import ListenerError
from adt_listener.mllp import Frame, FrameTooLarge, Garbage, MllpFramer, Truncated, encode

__all__ = ["MllpClient", "MllpPeerError", "add_arguments", "run"]

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_ACCEPTED = frozenset({b"AA", b"CA"})  # application accept, commit accept (table 0008)
_READ_SIZE = 65_536
_MAX_TEXT = 120  # characters of a receiver's error text shown, to keep one line per message


# --- files -> messages ----------------------------------------------------------------------


def _fields(segment: bytes, separator: bytes) -> list[bytes]:
    """Fields numbered as in the standard: ``_fields(seg)[n]`` is SEG-n.

    For MSH, MSH-1 is the separator itself, so the split is shifted by one.
    """
    parts = segment.split(separator)
    if segment.startswith(b"MSH"):
        return [parts[0], separator, *parts[1:]]
    return parts


def _field(fields: list[bytes], n: int) -> bytes:
    return fields[n] if n < len(fields) else b""


def _msh(message: bytes) -> tuple[list[bytes], bytes]:
    """The MSH fields of ``message`` and its field separator ("|" if there is no MSH)."""
    first = _LINE_BREAK.split(message, maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return [], b"|"
    separator = first[3:4]
    return _fields(first, separator), separator


# --- the client -----------------------------------------------------------------------------


class MllpPeerError(ListenerError, ConnectionError):
    """Their fault: the peer broke MLLP framing (bytes outside a block, a cut or
    oversized block).

    Also a `ConnectionError`, because the only sane reaction is the same: the stream
    can no longer be trusted to pair replies with requests, so close it.
    """


class MllpClient:
    """An MLLP connection that sends messages and returns the ACKs, in order.

    Replies are paired with requests by order only, as MLLP does (it has no request
    ids). Hence after a timeout the client refuses further use: a late ACK would be
    taken for the reply to the next message. For the same reason it is not meant to
    be shared by concurrent tasks; use `send_many` to pipeline.

    The methods take a ``timeout`` instead of leaving it to ``asyncio.timeout`` around
    the call because the deadline is per ACK, and a timeout must also retire the
    connection, which only the client can do.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, max_frame_bytes: int
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = MllpFramer(max_frame_bytes)
        self._frames: deque[bytes] = deque()
        self._unusable: str | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        max_frame_bytes: int = 1_048_576,
    ) -> MllpClient:
        """Open a TCP (or TLS, when ``ssl`` is given) connection; raises OSError on failure."""
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        return cls(reader, writer, max_frame_bytes=max_frame_bytes)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def send(self, message: bytes, *, timeout: float = 30.0) -> bytes:  # noqa: ASYNC109 (see class doc)
        """Send one message and return the payload of the next frame, its ACK.

        Raises TimeoutError (`asyncio.TimeoutError`) when the write or the ACK takes
        longer than ``timeout`` seconds (each), ConnectionError when the connection
        fails or the peer breaks framing, ValueError when the message holds 0x0B or
        0x1C (MLLP cannot frame it).
        """
        await self.write(message, timeout=timeout)
        return await self.receive(timeout=timeout)

    async def send_many(self, messages: Sequence[bytes], *, timeout: float = 30.0) -> list[bytes]:  # noqa: ASYNC109 (see class doc)
        """Pipeline: write all messages, and read their ACKs in order meanwhile.

        Writing runs in its own task while the ACKs are read: a receiver that applies
        back-pressure stops reading when its unread ACKs fill our socket buffer, and
        we would wait forever for it if we did not read until everything was written.
        ``timeout`` applies to each ACK.
        """
        frames = [encode(m) for m in messages]  # ValueError before anything is written
        self._check_usable()
        writing = asyncio.create_task(self._write_frames(frames))
        try:
            acks = [await self.receive(timeout=timeout) for _ in frames]
        except BaseException:
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            raise
        try:
            await writing
        except OSError as exc:
            raise self._lost(exc) from exc
        return acks

    async def write(self, message: bytes, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (see class doc)
        """Send one message without waiting for a reply (used for MSH-15 = NE)."""
        frame = encode(message)
        self._check_usable()
        try:
            async with asyncio.timeout(timeout):
                await self._write_frames([frame])
        except TimeoutError:
            self._unusable = "a write timed out"
            raise
        except OSError as exc:
            raise self._lost(exc) from exc

    async def receive(self, *, timeout: float = 30.0) -> bytes:  # noqa: ASYNC109 (see class doc)
        """Return the payload of the next frame from the peer, waiting up to ``timeout`` s."""
        frame = await self._next_frame(timeout)
        if frame is None:
            self._unusable = "an ACK did not arrive in time"
            raise TimeoutError
        return frame

    async def poll(self, *, timeout: float) -> bytes | None:  # noqa: ASYNC109 (see class doc)
        """The next frame if one arrives within ``timeout`` s, else None, and the connection
        stays usable: for replies that may never come (MSH-15 = ER / NE, enhanced mode).
        The caller pairs a reply arriving later by its MSA-2, not by order."""
        return await self._next_frame(timeout)

    async def _next_frame(self, timeout: float) -> bytes | None:  # noqa: ASYNC109 (see class doc)
        self._check_usable()
        try:
            async with asyncio.timeout(timeout):
                while not self._frames:
                    # Cancelling a read loses nothing: bytes not yet returned stay in the
                    # StreamReader, bytes returned are in the framer.
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        self._unusable = "the peer closed the connection"
                        raise ConnectionError("connection closed by the peer before an ACK arrived")
                    self._take(data)
        except TimeoutError:
            return None
        except OSError as exc:  # reset, TLS alert, and our own ConnectionErrors above
            raise self._lost(exc) from exc
        return self._frames.popleft()

    async def close(self) -> None:
        """Close the connection; errors while closing (peer already gone) are ignored."""
        self._unusable = self._unusable or "the client was closed"
        if self._writer.is_closing():
            return
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:  # includes ssl.SSLError: the peer may have gone first
            pass

    def _lost(self, exc: OSError) -> ConnectionError:
        """One exception type for callers: any socket or TLS failure is a lost connection."""
        self._unusable = self._unusable or "the connection failed"
        return exc if isinstance(exc, ConnectionError) else ConnectionError(f"connection failed: {exc}")

    def _check_usable(self) -> None:
        if self._unusable is not None:
            raise ConnectionError(f"MLLP connection no longer usable: {self._unusable}")

    async def _write_frames(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            self._writer.write(frame)
            await self._writer.drain()  # returns at once below the high-water mark

    def _take(self, data: bytes) -> None:
        for event in self._framer.feed(data):
            if isinstance(event, Frame):
                self._frames.append(event.payload)
                continue
            self._unusable = "the peer broke MLLP framing"
            if isinstance(event, Garbage):
                raise MllpPeerError(
                    f"peer sent {event.size} bytes outside MLLP framing (not an MLLP server?)"
                )
            if isinstance(event, Truncated):
                raise MllpPeerError(f"peer started a new block inside a block ({event.size} bytes dropped)")
            if isinstance(event, FrameTooLarge):
                raise MllpPeerError(f"peer sent a {event.size}-byte block, over the limit")


# --- ACK -> one line ------------------------------------------------------------------------

# MSA-1 (table 0008) as the summary counts it: enhanced mode's commit codes (CA, CE, CR)
# with the application codes they stand for.
_KIND = {b"AA": "AA", b"CA": "AA", b"AE": "AE", b"CE": "AE", b"AR": "AR", b"CR": "AR"}
# The listener answers a retransmission with the ACK it stored for the first copy, its
# MSA-3 saying so: how a sender tells "taken now" from "taken before".
_DUPLICATE = b"retransmission"


@dataclass(frozen=True, slots=True)
class _Outcome:
    text: str
    kind: str  # AA, AE or AR (commit codes included); "unreadable": no known MSA-1, or another MSA-2
    duplicate: bool = False

    @property
    def accepted(self) -> bool:
        return self.kind == "AA"


def _show(value: bytes) -> str:
    """Printable text for an identifier or code; control characters become "?"."""
    text = value.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _describe_ack(ack: bytes, control_id: bytes) -> _Outcome:
    """MSA-1, and for each ERR segment its location, code and text (chapter 2, 2.15.5).

    ERR-2 (error location), ERR-3 (HL7 error code, table 0357) and ERR-8 (user
    message) are read for v2.5 and later; ERR-1 (error code and location) for earlier
    versions. MSA-3 (text message, deprecated from v2.4 on) is shown when present,
    except that of a stored answer to a retransmission, which is said in our words.
    """
    _, separator = _msh(ack)
    msa: list[bytes] = []
    errors: list[str] = []
    for segment in _LINE_BREAK.split(ack):
        if segment.startswith(b"MSA"):
            msa = _fields(segment, separator)
        elif segment.startswith(b"ERR"):
            fields = _fields(segment, separator)
            parts = [
                _show(p)
                for p in (_field(fields, 2) or _field(fields, 1), _field(fields, 3), _field(fields, 8))
                if p
            ]
            errors.append(" ".join(parts))
    code = _field(msa, 1)
    if not code:
        return _Outcome("unreadable ACK (no MSA-1)", "unreadable")
    text = _show(code)
    kind = _KIND.get(code.strip().upper(), "unreadable")
    acked_id = _field(msa, 2).strip()
    # Compared without blanks around them: a receiver may trim MSH-10 when it copies it.
    if control_id and acked_id != control_id.strip():
        text += f"  (MSA-2 is {_show(acked_id) or 'empty'}, not this message's MSH-10)"
        kind = "unreadable"
    msa_text = _field(msa, 3)
    duplicate = msa_text.strip().lower().startswith(_DUPLICATE)
    if duplicate:
        text += " (duplicate: stored acknowledgement)"
    elif msa_text:
        text += f"  {_show(msa_text)[:_MAX_TEXT]}"
    if errors:
        text += "  ERR " + "; ".join(e[:_MAX_TEXT] for e in errors)
    return _Outcome(text, kind, duplicate)


@dataclass
class _Tally:
    """The summary line. A duplicate is also counted under its code (AA, AE, AR)."""

    sent: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    def add(self, outcome: _Outcome) -> None:
        self.counts[outcome.kind] += 1
        self.duplicates += outcome.duplicate

    @property
    def failed(self) -> bool:
        return any(self.counts[k] for k in ("AE", "AR", "unanswered", "unreadable"))

    def line(self) -> str:
        c = self.counts
        text = (f"sent {self.sent}: AA {c['AA']}, AE {c['AE']}, AR {c['AR']}, duplicates {self.duplicates}, "
                f"no ACK expected {c['no_ack']}, unanswered {c['unanswered']}")
        return text + (f", unreadable ACKs {c['unreadable']}" if c["unreadable"] else "")


# --- the command ----------------------------------------------------------------------------

# MSH-15 (accept acknowledgment type, HL7 table 0155) values under which a receiver in
# enhanced mode sends no ACK for a message it took: ER (only on error) and NE (never).
_QUIET_ON_SUCCESS = frozenset({b"ER", b"NE"})


class _UsageError(Exception):
    """An error of the command line, the files or the connection: exit status 2."""


@dataclass(frozen=True, slots=True)
class _Item:
    label: str
    message: bytes
    control_id: bytes
    accept_ack: bytes  # MSH-15, upper case; empty in original mode

    @property
    def quiet_on_success(self) -> bool:
        return self.accept_ack in _QUIET_ON_SUCCESS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", type=Path, help="HL7 v2 files, one or more messages each"
    )
    parser.add_argument("--host", default="127.0.0.1", help="MLLP listener host (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=None,
        help="MLLP listener port (default: $WPC_MLLP_PORT, else that of the `wpc up` running here, else 2575)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="connect with TLS (implied by --cafile/--certfile)"
    )
    parser.add_argument("--cafile", type=Path, help="CA bundle to verify the server (default: system CAs)")
    parser.add_argument("--certfile", type=Path, help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--keyfile", type=Path, help="private key of --certfile, if not in the same file")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each ACK (default: %(default)s)"
    )
    parser.add_argument(
        "--grace", type=float, default=0.5,
        help="seconds to wait for an error ACK to a message whose MSH-15 is ER or NE, which gets no ACK "
        "when taken (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        items = _load(args.files)
        port = _port(args)
        if args.timeout <= 0:
            raise _UsageError("--timeout must be positive")
        if args.grace < 0:
            raise _UsageError("--grace must not be negative")
        context = _ssl_context(args)
        return asyncio.run(_send_all(items, args.host, port, context, args.timeout, args.grace))
    except _UsageError as exc:
        print(f"wpc send: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        port = int(args.port)
    else:
        # Imported here: only the command needs settings, and only when --port is absent. A
        # wrong WPC_ value raises ConfigError, which `wpc` reports in one line.
        from adt_listener.settings import ListenerSettings
        from services.runinfo import read_run_info
        from services.settings import load_settings

        settings = load_settings(ListenerSettings)
        port = settings.mllp_port
        running = read_run_info(settings.data_dir) if args.host in ("127.0.0.1", "localhost", "::1") else None
        if "mllp_port" not in settings.model_fields_set and running is not None and running.ports.get("mllp"):
            port = running.ports["mllp"]
            print(f"wpc send: to the `wpc up` running here (pid {running.pid}), MLLP port {port}", file=sys.stderr)
    if not 0 < port < 65_536:
        raise _UsageError(f"port {port} out of range")
    return port


def _load(paths: Sequence[Path]) -> list[_Item]:
    """Read and split every file before connecting, so a bad file fails fast."""
    items: list[_Item] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
        messages = split_messages(data)
        if not messages:
            raise _UsageError(f"{path}: no HL7 message in the file")
        for n, message in enumerate(messages, start=1):
            label = str(path) if len(messages) == 1 else f"{path}#{n}"
            if b"\x0b" in message or b"\x1c" in message:
                raise _UsageError(f"{label}: holds byte 0x0B or 0x1C, which MLLP cannot frame")
            msh, _ = _msh(message)
            component = msh[2][:1] if len(msh) > 2 and msh[2] else b"^"  # MSH-2: ^ by default
            accept_ack = _field(msh, 15).split(component, 1)[0].strip().upper()
            items.append(_Item(label, message, _field(msh, 10).strip(), accept_ack))
    return items


def _ssl_context(args: argparse.Namespace) -> ssl_module.SSLContext | None:
    if not (args.tls or args.cafile or args.certfile):
        if args.keyfile:
            raise _UsageError("--keyfile needs --certfile")
        return None
    if args.keyfile and not args.certfile:
        raise _UsageError("--keyfile needs --certfile")
    try:
        context = ssl_module.create_default_context(cafile=args.cafile)
        if args.certfile:
            context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl_module.SSLError) as exc:  # missing file, bad PEM, key not matching
        raise _UsageError(f"TLS setup failed: {exc}") from exc
    return context


async def _connect(host: str, port: int, context: ssl_module.SSLContext | None, wait_s: float) -> MllpClient:
    try:
        async with asyncio.timeout(wait_s):
            return await MllpClient.connect(host, port, ssl=context)
    except TimeoutError as exc:
        raise _UsageError(f"cannot connect to {host}:{port}: no answer within {wait_s:g} s") from exc
    except OSError as exc:  # refused, unreachable, unknown host, TLS handshake failure
        raise _UsageError(f"cannot connect to {host}:{port}: {exc}") from exc


async def _send_all(
    items: Sequence[_Item], host: str, port: int, context: ssl_module.SSLContext | None, wait_s: float,
    grace_s: float,
) -> int:
    tally = _Tally()
    client: MllpClient | None = None
    # Messages sent with MSH-15 = ER / NE that no ACK answered (yet), by control id: an error
    # ACK later than the grace is told apart from the next message's ACK by its MSA-2.
    quiet: dict[bytes, str] = {}
    try:
        for index, item in enumerate(items):
            if client is None:
                client = await _connect(host, port, context, wait_s)
            head = f"{item.label}  {_show(item.control_id) or '-'}  ->  "
            try:
                await client.write(item.message, timeout=wait_s)
                tally.sent += 1
                ack = await _reply(client, item, quiet, tally, grace_s if item.quiet_on_success else wait_s)
            except TimeoutError:  # the write itself did not complete
                ack = None
            except ConnectionError as exc:
                print(head + "connection lost", flush=True)
                tally.counts["unanswered"] += 1
                left = len(items) - index - 1
                raise _UsageError(
                    f"connection to {host}:{port} lost: {exc}"
                    + (f"; {left} message(s) not sent" if left else "")
                ) from exc
            if ack is None and item.quiet_on_success:
                quiet[item.control_id] = item.label
                tally.counts["no_ack"] += 1
                print(head + f"sent, no ACK expected (MSH-15 = {_show(item.accept_ack)})", flush=True)
                continue
            if ack is None:
                su = " (MSH-15 = SU: the receiver acknowledges success only)" if item.accept_ack == b"SU" else ""
                print(head + f"no ACK within {wait_s:g} s{su}", flush=True)
                tally.counts["unanswered"] += 1
                # The late ACK may still come: a new connection keeps it from being taken
                # for the reply to the next message.
                await client.close()
                client = None
                continue
            outcome = _describe_ack(ack, item.control_id)
            tally.add(outcome)
            print(head + outcome.text, flush=True)
    finally:
        if client is not None:
            await client.close()
        if tally.sent:
            print(tally.line(), flush=True)
    return 1 if tally.failed else 0


async def _reply(
    client: MllpClient, item: _Item, quiet: dict[bytes, str], tally: _Tally, wait_s: float
) -> bytes | None:
    """The ACK to ``item`` within ``wait_s`` seconds, or None.

    An ACK whose MSA-2 names an earlier ER / NE message is that message's late answer (an
    error, or a receiver in original mode, which acknowledges every message whatever
    MSH-15 says): it is reported and counted, and the wait goes on.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (ack := await client.poll(timeout=max(0.0, deadline - loop.time()))) is not None:
        acked_id = _msa_2(ack)
        if acked_id != item.control_id and acked_id in quiet:
            outcome = _describe_ack(ack, acked_id)
            print(f"{quiet.pop(acked_id)}  {_show(acked_id)}  ->  late answer: {outcome.text}", flush=True)
            tally.counts["no_ack"] -= 1
            tally.add(outcome)
            continue
        return ack
    return None


def _msa_2(ack: bytes) -> bytes:
    """MSA-2 (the control id acknowledged) of an ACK, empty when absent."""
    _, separator = _msh(ack)
    for segment in _LINE_BREAK.split(ack):
        if segment.startswith(b"MSA"):
            return _field(_fields(segment, separator), 2).strip()
    return b""
