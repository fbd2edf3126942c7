"""`wpc send FILE...`: send HL7 v2 files over MLLP and print one line per ACK.

Also home of `MllpClient`, the asyncio MLLP client that tests and benchmarks reuse.
Like the server, it is a thin driver around the sans-I/O framer in
`adt_listener.mllp`: it writes `encode(message)` and feeds what it reads to an
`MllpFramer` until a frame (the ACK) comes out.

The command speaks the original acknowledgment mode of HL7 v2 (chapter 2, section
2.9.2): one message, then wait for its ACK, before the next one, over one
connection. A message whose MSH-15 (accept acknowledgment type, HL7 table 0155) is
"NE" asks the receiver never to acknowledge it (enhanced mode, section 2.9.3), so
the command sends it and moves on. MLLP release 2 commit acknowledgments (the single
bytes <ACK>/<NAK> as a block) are not spoken.

Output holds file names, MSH-10 (message control id), MSA-1 and the ERR locations,
codes and texts the receiver wrote; never other message content, which may be PHI.

Exit status: 0 when every awaited ACK was AA or CA; 1 when any was AE, AR, CE, CR,
unreadable, for another control id, or did not come in time; 2 for usage and
connection errors (unreadable file, refused connection, TLS failure, connection
lost), with a message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl as ssl_module
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from adt_listener.errors import ListenerError
from adt_listener.mllp import Frame, FrameTooLarge, Garbage, MllpFramer, Truncated, encode

__all__ = ["MllpClient", "MllpPeerError", "add_arguments", "run", "split_messages"]

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# Batch envelope segments (HL7 v2 chapter 2, section 2.10.3): a file or batch header or
# trailer wraps the messages of a batch file but is not part of any message.
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_ACCEPTED = frozenset({b"AA", b"CA"})  # application accept, commit accept (table 0008)
_READ_SIZE = 65_536
_MAX_TEXT = 120  # characters of a receiver's error text shown, to keep one line per message


# --- files -> messages ----------------------------------------------------------------------


def split_messages(data: bytes) -> list[bytes]:
    """Split the contents of an HL7 file into messages, each segment ended by CR.

    A file may hold one message or many (a batch file, or files joined with `cat`).
    A new message starts at each line beginning with the segment id MSH; batch
    envelope segments (FHS, BHS, BTS, FTS) are dropped. Lines may end with CR, LF
    or CRLF, because files are edited on every platform, but HL7 v2 (chapter 2,
    section 2.5.3) terminates a segment with CR alone, so that is what each message
    gets, including after its last segment. Empty and whitespace-only lines are not
    segments and are dropped. A UTF-8 byte order mark at the start of a line (the
    start of the file, or of a file joined with `cat`) is dropped. All other bytes
    are kept as they are: nothing is decoded, so a message in latin-1 is sent in
    latin-1, as the receiver's MSH-18 handling expects.

    Lines before the first MSH (other than an envelope) form a message of their own,
    rather than being dropped silently: the receiver is the judge of a malformed
    message, and will answer it with AR.
    """
    messages: list[list[bytes]] = []
    current: list[bytes] = []
    for raw_line in _LINE_BREAK.split(data):
        line = raw_line[len(_BOM) :] if raw_line.startswith(_BOM) else raw_line
        if not line.strip():
            continue
        segment_id = _segment_id(line)
        if segment_id in _ENVELOPE:
            continue
        if segment_id == b"MSH" and current:
            messages.append(current)
            current = []
        current.append(line)
    if current:
        messages.append(current)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def _segment_id(line: bytes) -> bytes | None:
    """The three-character segment id, or None when the line does not start with one.

    The id is followed by the field separator, which is never alphanumeric (chapter 2,
    MSH-1), so "MSHX|..." is not an MSH segment.
    """
    if len(line) > 3 and line[3:4].isalnum():
        return None
    return line[:3]


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
        self._check_usable()
        try:
            async with asyncio.timeout(timeout):
                while not self._frames:
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        self._unusable = "the peer closed the connection"
                        raise ConnectionError("connection closed by the peer before an ACK arrived")
                    self._take(data)
        except TimeoutError:
            self._unusable = "an ACK did not arrive in time"
            raise
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


@dataclass(frozen=True, slots=True)
class _Outcome:
    text: str
    accepted: bool


def _show(value: bytes) -> str:
    """Printable text for an identifier or code; control characters become "?"."""
    text = value.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _describe_ack(ack: bytes, control_id: bytes) -> _Outcome:
    """MSA-1, and for each ERR segment its location, code and text (chapter 2, 2.15.5).

    ERR-2 (error location), ERR-3 (HL7 error code, table 0357) and ERR-8 (user
    message) are read for v2.5 and later; ERR-1 (error code and location) for earlier
    versions. MSA-3 (text message, deprecated from v2.4 on) is shown when present.
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
        return _Outcome("unreadable ACK (no MSA-1)", accepted=False)
    text = _show(code)
    accepted = code in _ACCEPTED
    acked_id = _field(msa, 2)
    if control_id and acked_id != control_id:
        text += f"  (MSA-2 is {_show(acked_id) or 'empty'}, not this message's MSH-10)"
        accepted = False
    if msa_text := _field(msa, 3):
        text += f"  {_show(msa_text)[:_MAX_TEXT]}"
    if errors:
        text += "  ERR " + "; ".join(e[:_MAX_TEXT] for e in errors)
    return _Outcome(text, accepted)


# --- the command ----------------------------------------------------------------------------


class _UsageError(Exception):
    """An error of the command line, the files or the connection: exit status 2."""


@dataclass(frozen=True, slots=True)
class _Item:
    label: str
    message: bytes
    control_id: bytes
    no_ack: bool  # MSH-15 = NE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", type=Path, help="HL7 v2 files, one or more messages each"
    )
    parser.add_argument("--host", default="127.0.0.1", help="MLLP listener host (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=None, help="MLLP listener port (default: $WPC_MLLP_PORT, else 2575)"
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


def run(args: argparse.Namespace) -> int:
    try:
        items = _load(args.files)
        port = _port(args)
        if args.timeout <= 0:
            raise _UsageError("--timeout must be positive")
        context = _ssl_context(args)
        return asyncio.run(_send_all(items, args.host, port, context, args.timeout))
    except _UsageError as exc:
        print(f"wpc send: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        port = int(args.port)
    else:
        # Imported here: only the command needs settings, and only when --port is absent.
        from pydantic import ValidationError

        from services.settings import Settings

        try:
            port = Settings().mllp_port
        except ValidationError as exc:
            raise _UsageError(f"invalid WPC_ settings in the environment: {exc}") from exc
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
            items.append(_Item(label, message, _field(msh, 10), _field(msh, 15).strip() == b"NE"))
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
    items: Sequence[_Item], host: str, port: int, context: ssl_module.SSLContext | None, wait_s: float
) -> int:
    failed = False
    client: MllpClient | None = None
    no_ack_ids: set[bytes] = set()  # control ids sent with MSH-15 = NE
    try:
        for index, item in enumerate(items):
            if client is None:
                client = await _connect(host, port, context, wait_s)
            head = f"{item.label}  {_show(item.control_id) or '-'}  ->  "
            try:
                if item.no_ack:
                    await client.write(item.message, timeout=wait_s)
                    no_ack_ids.add(item.control_id)
                    print(head + "not awaited (MSH-15 = NE)", flush=True)
                    continue
                ack = await _exchange(client, item, no_ack_ids, wait_s)
            except TimeoutError:
                print(head + f"no ACK within {wait_s:g} s", flush=True)
                failed = True
                # The late ACK may still come: a new connection keeps it from being taken
                # for the reply to the next message.
                await client.close()
                client = None
                continue
            except ConnectionError as exc:
                print(head + "connection lost", flush=True)
                left = len(items) - index - 1
                raise _UsageError(
                    f"connection to {host}:{port} lost: {exc}"
                    + (f"; {left} message(s) not sent" if left else "")
                ) from exc
            outcome = _describe_ack(ack, item.control_id)
            print(head + outcome.text, flush=True)
            failed = failed or not outcome.accepted
    finally:
        if client is not None:
            await client.close()
    return 1 if failed else 0


async def _exchange(client: MllpClient, item: _Item, no_ack_ids: set[bytes], wait_s: float) -> bytes:
    """Send ``item`` and return its ACK, skipping ACKs to earlier NE messages.

    A receiver in original mode acknowledges every message whatever MSH-15 says; such
    an ACK to a message we did not wait for arrives before the one we wait for.
    """
    await client.write(item.message, timeout=wait_s)
    while True:
        ack = await client.receive(timeout=wait_s)
        acked_id = _msa_2(ack)
        if acked_id in no_ack_ids and acked_id != item.control_id:
            no_ack_ids.discard(acked_id)
            continue
        return ack


def _msa_2(ack: bytes) -> bytes:
    """MSA-2 (the control id acknowledged) of an ACK, empty when absent."""
    _, separator = _msh(ack)
    for segment in _LINE_BREAK.split(ack):
        if segment.startswith(b"MSA"):
            return _field(_fields(segment, separator), 2)
    return b""
