"""The MLLP framer as tables of bytes -> events, plus property tests; no sockets."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adt_listener.mllp import (
    END,
    HEAD_BYTES,
    START,
    Event,
    Frame,
    FrameTooLarge,
    Garbage,
    MllpFramer,
    Truncated,
    encode,
)

MSG = b"MSH|^~\\&|SND|FAC|RCV|FAC|20240101000000||ADT^A01^ADT_A01|CTRL1|P|2.5\rEVN|A01\r"


def feed_all(framer: MllpFramer, chunks: Sequence[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    return events


def merge_garbage(events: Sequence[Event]) -> list[Event]:
    """Garbage runs split across reads come as several events; sum adjacent ones."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Garbage) and merged and isinstance(merged[-1], Garbage):
            merged[-1] = Garbage(merged[-1].size + event.size)
        else:
            merged.append(event)
    return merged


# (id, chunks fed in order, expected events)
CASES: list[tuple[str, list[bytes], list[Event]]] = [
    ("one frame", [b"\x0b" + MSG + b"\x1c\r"], [Frame(MSG)]),
    ("nothing", [b""], []),
    ("empty frame", [b"\x0b\x1c\r"], [Frame(b"")]),
    ("newline after end block", [b"\x0bA\x1c\r\n\x0bB\x1c\r\n"], [Frame(b"A"), Frame(b"B")]),
    ("whitespace only", [b" \t\r\n\r\n  "], []),
    ("lone EB then next frame", [b"\x0bA\x1c\x0bB\x1c\r"], [Frame(b"A"), Frame(b"B")]),
    ("EB LF", [b"\x0bA\x1c\n"], [Frame(b"A")]),
    ("EB then garbage byte", [b"\x0bA\x1cx\x0bB\x1c\r"], [Frame(b"A"), Garbage(1), Frame(b"B")]),
    ("frame ready at EB, CR in next read", [b"\x0bA\x1c", b"\r"], [Frame(b"A")]),
    ("frame split in the payload", [b"\x0bAB", b"C", b"D\x1c\r"], [Frame(b"ABCD")]),
    ("start block alone", [b"\x0b", b"A\x1c\r"], [Frame(b"A")]),
    (
        "three frames in one read",
        [b"\x0bA\x1c\r\x0bBB\x1c\r\x0bCCC\x1c\r"],
        [Frame(b"A"), Frame(b"BB"), Frame(b"CCC")],
    ),
    (
        "HTTP request at the MLLP port",
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
        [Garbage(len(b"GET/HTTP/1.1Host:x"))],
    ),
    ("garbage then frame", [b"junk \x0bA\x1c\r"], [Garbage(4), Frame(b"A")]),
    ("garbage between frames", [b"\x0bA\x1c\r zz \x0bB\x1c\r"], [Frame(b"A"), Garbage(2), Frame(b"B")]),
    ("garbage split across reads", [b"ab", b"cd\x0bA\x1c\r"], [Garbage(2), Garbage(2), Frame(b"A")]),
    ("stray end block outside a frame", [b"\x1c\r"], [Garbage(1)]),
    ("start block inside a frame", [b"\x0bMSH|part\x0bMSH|full\x1c\r"], [Truncated(8), Frame(b"MSH|full")]),
    ("start block inside a frame, split", [b"\x0bMSH|part", b"\x0bB\x1c\r"], [Truncated(8), Frame(b"B")]),
    ("double start block", [b"\x0b\x0bA\x1c\r"], [Truncated(0), Frame(b"A")]),
    (
        "payload bytes kept as they are",
        [b"\x0b\xef\xbb\xbfMSH|\x00\xff\r\n\t \x1c\r"],
        [Frame(b"\xef\xbb\xbfMSH|\x00\xff\r\n\t ")],
    ),
    ("unfinished frame reports nothing", [b"\x0bMSH|..."], []),
]


@pytest.mark.parametrize(("chunks", "expected"), [(c, e) for _, c, e in CASES], ids=[i for i, _, _ in CASES])
def test_table(chunks: list[bytes], expected: list[Event]) -> None:
    assert feed_all(MllpFramer(), chunks) == expected


@pytest.mark.parametrize("chunks", [c for _, c, _ in CASES], ids=[i for i, _, _ in CASES])
def test_table_split_at_every_byte(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    whole = merge_garbage(MllpFramer().feed(data))
    for cut in range(len(data) + 1):
        assert merge_garbage(feed_all(MllpFramer(), [data[:cut], data[cut:]])) == whole, cut
    assert merge_garbage(feed_all(MllpFramer(), [data[i : i + 1] for i in range(len(data))])) == whole


def test_split_every_position_of_two_real_frames() -> None:
    second = MSG.replace(b"CTRL1", b"CTRL2")
    data = encode(MSG) + b"\r\n" + encode(second)
    for cut in range(len(data) + 1):
        for cut2 in range(cut, len(data) + 1, 7):
            events = feed_all(MllpFramer(), [data[:cut], data[cut:cut2], data[cut2:]])
            assert events == [Frame(MSG), Frame(second)], (cut, cut2)


def test_many_frames_in_one_read() -> None:
    payloads = [MSG.replace(b"CTRL1", b"C%05d" % i) for i in range(2000)]
    data = b"".join(encode(p) + b"\n" for p in payloads)
    assert MllpFramer().feed(data) == [Frame(p) for p in payloads]


def test_in_frame_and_buffered_follow_the_stream() -> None:
    framer = MllpFramer()
    assert (framer.in_frame, framer.buffered) == (False, 0)
    framer.feed(b"\r\n  ")
    assert (framer.in_frame, framer.buffered) == (False, 0)
    framer.feed(b"\x0b")
    assert (framer.in_frame, framer.buffered) == (True, 0)
    framer.feed(b"MSH|abc")
    assert (framer.in_frame, framer.buffered) == (True, 7)
    assert framer.feed(b"\x1c") == [Frame(b"MSH|abc")]
    assert (framer.in_frame, framer.buffered) == (False, 0)
    framer.feed(b"\r\x0bX")
    assert (framer.in_frame, framer.buffered) == (True, 1)


# --- size limit ---------------------------------------------------------------------------


def test_frame_at_the_limit_is_delivered() -> None:
    assert MllpFramer(max_frame_bytes=10).feed(b"\x0b" + b"A" * 10 + b"\x1c\r") == [Frame(b"A" * 10)]


def test_frame_over_the_limit_reports_head_and_size_once() -> None:
    framer = MllpFramer(max_frame_bytes=10)
    events = feed_all(framer, [b"\x0b" + b"A" * 6, b"B" * 6, b"C" * 6, b"\x1c\r\x0bok\x1c\r"])
    assert events == [FrameTooLarge(head=b"A" * 6 + b"B" * 6 + b"C" * 6, size=18), Frame(b"ok")]


def test_head_is_the_first_head_bytes_whatever_the_split() -> None:
    payload = MSG + bytes(range(32, 127)) * 200  # about 19 KB, no delimiters
    data = encode(payload)
    expected = [FrameTooLarge(head=payload[:HEAD_BYTES], size=len(payload))]
    for max_frame_bytes in (1, 100, HEAD_BYTES, 10_000):
        for step in (1, 3, 1000, len(data)):
            framer = MllpFramer(max_frame_bytes=max_frame_bytes)
            chunks = [data[i : i + step] for i in range(0, len(data), step)]
            assert feed_all(framer, chunks) == expected, (max_frame_bytes, step)


def test_head_keeps_msh10_readable() -> None:
    payload = MSG + b"OBX|" + b"9" * 50_000 + b"\r"
    [event] = MllpFramer(max_frame_bytes=1000).feed(encode(payload))
    assert isinstance(event, FrameTooLarge)
    assert event.head.startswith(MSG) and b"|CTRL1|" in event.head


def test_oversized_frame_cut_by_start_block_is_truncated() -> None:
    framer = MllpFramer(max_frame_bytes=4)
    assert framer.feed(b"\x0b123456789\x0bAB\x1c\r") == [Truncated(9), Frame(b"AB")]


def test_endless_oversized_frame_keeps_memory_bounded() -> None:
    max_frame_bytes = 256 * 1024
    framer = MllpFramer(max_frame_bytes=max_frame_bytes)
    chunk = b"x" * 65_536
    framer.feed(START)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(512):  # 32 MiB, 128 times the limit
            assert framer.feed(chunk) == []
            assert framer.buffered <= max_frame_bytes
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert framer.in_frame
    assert framer.buffered == HEAD_BYTES
    # The frame buffer (with bytearray over-allocation) plus one chunk-sized temporary at most.
    assert peak - base < max_frame_bytes * 1.25 + HEAD_BYTES + len(chunk) + 16_384
    assert framer.feed(END) == [FrameTooLarge(head=b"x" * HEAD_BYTES, size=512 * len(chunk))]
    assert framer.buffered == 0


# --- linear time ---------------------------------------------------------------------------


class ScanCountingBytes(bytes):
    """bytes that count how many bytes `find` and `count` look at."""

    scanned = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        found = super().find(sub, start, end)
        # find stops at the first hit: it looked at the bytes up to and including it.
        stop = None if found < 0 else found + 1
        ScanCountingBytes.scanned += _span(len(self), start, end if stop is None else stop)
        return found

    def count(self, sub: Any, start: Any = None, end: Any = None) -> int:
        ScanCountingBytes.scanned += _span(len(self), start, end)
        return super().count(sub, start, end)


def _span(length: int, start: int | None, end: int | None) -> int:
    return max(0, (length if end is None else end) - (0 if start is None else start))


@pytest.mark.parametrize(
    "stream",
    [
        encode(b"A" * 200_000),
        b"\x0b" * 50_000 + b"\x1c\r",
        b"".join(encode(b"MSH|%d" % i) + b"\r\nzz " for i in range(5000)),
        bytes(range(256)) * 500,
    ],
    ids=["one large frame", "only start blocks", "many frames and garbage", "every byte value"],
)
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_each_byte_is_scanned_a_bounded_number_of_times(stream: bytes, step: int) -> None:
    ScanCountingBytes.scanned = 0
    framer = MllpFramer(max_frame_bytes=1_000_000)
    for i in range(0, len(stream), step):
        framer.feed(ScanCountingBytes(stream[i : i + step]))
    # <SB> search twice at most, <EB> search once, four whitespace counts for garbage.
    assert ScanCountingBytes.scanned <= 7 * len(stream)


# --- encode ---------------------------------------------------------------------------------


def test_encode_wraps_in_start_and_end_block() -> None:
    assert encode(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    assert MllpFramer().feed(encode(MSG)) == [Frame(MSG)]


@pytest.mark.parametrize("payload", [b"MSH|\x0b", b"MSH|\x1c|"])
def test_encode_refuses_delimiters_in_the_payload(payload: bytes) -> None:
    with pytest.raises(ValueError, match="start"):
        encode(payload)


@pytest.mark.parametrize("bad", [0, -1])
def test_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        MllpFramer(max_frame_bytes=bad)


# --- properties ----------------------------------------------------------------------------

payloads_st = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")))


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300)
@given(
    payloads=payloads_st,
    separators=st.lists(st.sampled_from([b"", b"\r", b"\n", b"\r\n", b" \t"]), min_size=1),
    cuts=st.lists(st.integers(min_value=0)),
)
def test_any_chunking_yields_exactly_the_payloads(
    payloads: list[bytes], separators: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(encode(p) + separators[i % len(separators)] for i, p in enumerate(payloads))
    framer = MllpFramer()
    assert feed_all(framer, _chunked(data, cuts)) == [Frame(p) for p in payloads]
    assert not framer.in_frame and framer.buffered == 0


@settings(max_examples=500)
@given(
    data=st.binary(max_size=2000)
    | st.lists(st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\n", b"A", b"MSH|", b"\x00"])).map(b"".join),
    cuts=st.lists(st.integers(min_value=0)),
    max_frame_bytes=st.integers(min_value=1, max_value=64) | st.just(1_048_576),
)
def test_random_bytes_never_raise_and_stay_bounded(
    data: bytes, cuts: list[int], max_frame_bytes: int
) -> None:
    whole = MllpFramer(max_frame_bytes).feed(data)
    framer = MllpFramer(max_frame_bytes)
    events: list[Event] = []
    for chunk in _chunked(data, cuts):
        events.extend(framer.feed(chunk))
        assert framer.buffered <= max(max_frame_bytes, HEAD_BYTES)
    # The split of the stream into reads changes nothing but how garbage runs are counted.
    assert merge_garbage(events) == merge_garbage(whole)
    for event in events:
        if isinstance(event, Frame):
            assert len(event.payload) <= max_frame_bytes
            assert b"\x0b" not in event.payload and b"\x1c" not in event.payload
        elif isinstance(event, FrameTooLarge):
            assert event.size > max_frame_bytes and len(event.head) == min(event.size, HEAD_BYTES)
