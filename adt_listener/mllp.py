"""MLLP framing without I/O: bytes in, events out; payloads in, framed bytes out.

The Minimal Lower Layer Protocol (HL7 v2 Transport Specification: MLLP, release 1
and release 2, section "Block format") wraps every HL7 message in a block::

    <SB> payload <EB><CR>        SB = 0x0B, EB = 0x1C, CR = 0x0D

This module knows nothing about sockets, asyncio or HL7 content, in the manner of
python-hyper/h11: `MllpFramer.feed` turns whatever a read returned into a list of
events, and `encode` turns a payload into the bytes to write. The server and the
client (`wpc.tools.send`) are thin drivers around it, and the framing rules
are tested as tables of bytes -> events, without a socket.

Decisions where the specification is silent or real peers stray from it:

* Whitespace (CR, LF, space, tab) between blocks is skipped without a report:
  many interface engines write a newline after ``<EB><CR>``, and a CR after a lone
  ``<EB>`` (see next point) is whitespace too.
* ``<EB>`` alone ends the block; the ``<CR>`` that should follow is not awaited.
  MLLP forbids 0x1C inside the payload (release 2, "Block format": the content
  must not contain the start or end block characters), so an ``<EB>`` can only
  mean "end of block". Some senders omit the ``<CR>`` or send ``<EB><LF>``; if we
  waited for the ``<CR>`` we would never deliver their message, and they would wait
  for an ACK we cannot send. Reporting the frame at ``<EB>`` also means a frame is
  delivered as soon as its last payload byte arrives.
* Any other byte outside a block is `Garbage`: counted, never buffered, reported at
  the latest at the end of the `feed` call that saw it (so a peer speaking another
  protocol is noticed without waiting for a start block it will never send). A run
  of garbage split across reads may therefore be reported as several events.
* A start block inside a block means the sender gave up on the message and started
  another (a typical sign of a sender-side timeout and retransmission): the partial
  block is dropped and reported as `Truncated`, and the new block begins.
* A block longer than ``max_frame_bytes`` is not buffered past the limit: its first
  `HEAD_BYTES` are kept so the server can still answer AR with the MSH-10 echoed
  (HL7 v2.x chapter 2, MSA-2), and `FrameTooLarge` is reported once when the block
  ends. An oversized block cut short by a start block is `Truncated`, like any other
  unfinished block: there is no complete message to answer.

Memory: the framer holds only the payload of the current block, at most
``max_frame_bytes`` bytes, or `HEAD_BYTES` once the block is known to be too large.

Time: each byte of input is examined a bounded number of times, by `bytes.find`
and `bytes.count` in C. Where h11's receive buffer keeps a search offset into a
buffer of unparsed bytes, this framer never needs one: a payload byte is scanned
once, when it arrives, and copied into the frame buffer already known to contain
no delimiter, so a slowly arriving large frame is never rescanned.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "END",
    "HEAD_BYTES",
    "START",
    "Event",
    "Frame",
    "FrameTooLarge",
    "Garbage",
    "MllpFramer",
    "Truncated",
    "encode",
]

START = b"\x0b"  # <SB>, vertical tab
END = b"\x1c\x0d"  # <EB><CR>, file separator + carriage return
HEAD_BYTES = 4096  # enough for any MSH segment, so an oversized message can still be answered

_SB = 0x0B
_EB = 0x1C
_WHITESPACE = (0x0D, 0x0A, 0x20, 0x09)  # CR, LF, space, tab


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete block; ``payload`` is the HL7 message as sent, without delimiters."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Garbage:
    """``size`` non-whitespace bytes arrived outside any block and were discarded."""

    size: int


@dataclass(frozen=True, slots=True)
class FrameTooLarge:
    """A block of ``size`` payload bytes exceeded the limit; ``head`` is its beginning.

    ``head`` holds the first `HEAD_BYTES` payload bytes, whatever the limit, so the
    receiver can read MSH-10 and answer AR instead of leaving the sender waiting
    for an ACK that never comes (and retransmitting the same oversized message).
    """

    head: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Truncated:
    """A start block arrived inside a block; its ``size`` payload bytes were dropped."""

    size: int


Event = Frame | Garbage | FrameTooLarge | Truncated


class MllpFramer:
    """Turns a stream of bytes from one connection into `Event` s.

    One instance per connection; `feed` whatever each read returns, in order.
    `feed` never raises: a peer cannot crash the receiver with its bytes, only
    cause `Garbage`, `Truncated` or `FrameTooLarge` events.
    """

    __slots__ = ("_head", "_in_frame", "_max", "_oversized", "_payload", "_size")

    def __init__(self, max_frame_bytes: int = 1_048_576) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self._max = max_frame_bytes
        self._in_frame = False
        self._payload = bytearray()  # payload of the current block, while within the limit
        self._oversized = False  # the current block passed the limit; only _head is kept
        self._head = b""
        self._size = 0  # payload bytes of the current block so far, kept or not

    @property
    def in_frame(self) -> bool:
        """True between a start block and its end block.

        The server times a started frame against its read timeout, separately from
        the (longer) idle timeout between messages.
        """
        return self._in_frame

    @property
    def buffered(self) -> int:
        """Bytes held: at most ``max_frame_bytes``, or `HEAD_BYTES` for an oversized block."""
        return len(self._head) if self._oversized else len(self._payload)

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data`` (any split of the stream) and return the events it completes."""
        events: list[Event] = []
        garbage = 0
        pos = 0
        n = len(data)
        while pos < n:
            sb = data.find(_SB, pos)
            if not self._in_frame:
                stop = n if sb < 0 else sb
                if stop > pos:
                    garbage += _count_non_whitespace(data, pos, stop)
                if sb < 0:
                    break
                if garbage:
                    events.append(Garbage(garbage))
                    garbage = 0
                self._begin()
                pos = sb + 1
                continue
            # Inside a block: the first of <EB> or <SB> decides. Searching for <EB>
            # only up to the next <SB> keeps the scan linear even for input made of
            # nothing but start blocks.
            limit = n if sb < 0 else sb
            eb = data.find(_EB, pos, limit)
            if eb >= 0:
                self._append(data, pos, eb)
                events.append(self._finish())
                pos = eb + 1  # a following <CR> is whitespace outside a block
            elif sb >= 0:
                self._append(data, pos, sb)
                events.append(Truncated(self._size))
                self._begin()
                pos = sb + 1
            else:
                self._append(data, pos, n)
                pos = n
        if garbage:
            events.append(Garbage(garbage))
        return events

    def _begin(self) -> None:
        self._in_frame = True
        self._payload = bytearray()
        self._oversized = False
        self._head = b""
        self._size = 0

    def _append(self, data: bytes, start: int, stop: int) -> None:
        count = stop - start
        if count <= 0:
            return
        self._size += count
        if self._oversized:
            # Past the limit only the size is kept, and the head until it is complete
            # (it may be short when the limit is below HEAD_BYTES). Filling it here
            # rather than at the switch makes it independent of how reads split.
            missing = HEAD_BYTES - len(self._head)
            if missing > 0:
                self._head += data[start : start + min(missing, count)]
            return
        if len(self._payload) + count <= self._max:
            self._payload += memoryview(data)[start:stop]
            return
        # This chunk takes the block past the limit: keep the head, drop the rest.
        missing = max(0, HEAD_BYTES - len(self._payload))
        self._head = bytes(self._payload[:HEAD_BYTES]) + data[start : start + min(missing, count)]
        self._payload = bytearray()  # a new object, so the memory is returned now
        self._oversized = True

    def _finish(self) -> Frame | FrameTooLarge:
        event: Frame | FrameTooLarge
        if self._oversized:
            event = FrameTooLarge(head=self._head, size=self._size)
        else:
            event = Frame(bytes(self._payload))
        self._in_frame = False
        self._payload = bytearray()
        self._oversized = False
        self._head = b""
        self._size = 0
        return event


def _count_non_whitespace(data: bytes, start: int, stop: int) -> int:
    """Bytes in ``data[start:stop]`` that are not whitespace, without copying the slice."""
    return (stop - start) - sum(data.count(ws, start, stop) for ws in _WHITESPACE)


def encode(payload: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP block: ``<SB> payload <EB><CR>``.

    Raises ValueError if the payload holds a start or end block byte: MLLP has no
    escaping (release 2, "Block format"), so such a payload would be split or cut
    short by the receiver; sending it anyway would corrupt the stream.
    """
    if _SB in payload or _EB in payload:
        raise ValueError("payload contains an MLLP start (0x0B) or end (0x1C) block byte")
    return START + payload + END
