"""The open-loop load generator of `wpc bench ingest` and `wpc bench pipeline` (pure parts)."""

from __future__ import annotations

from collections import defaultdict

from adt_listener.mllp import Frame, MllpFramer
from bench.ingest import _field, _Source, open_schedules, patient_connection
from bench.synthetic import synthetic_feed


def _payload(framed: bytes) -> bytes:
    (frame,) = MllpFramer().feed(framed)
    assert isinstance(frame, Frame)
    return frame.payload


def test_field_reads_msh_as_hl7_counts_it_and_other_segments_plainly() -> None:
    message = b"MSH|^~\\&|APP|HOSP|WPC|WPC|20250101||ADT^A01|C1|P|2.5.1\rPID|1||123^^^HOSP^MR||DOE^J\r"
    assert _field(message, b"MSH", 4) == b"HOSP"
    assert _field(message, b"MSH", 10) == b"C1"
    assert _field(message, b"PID", 3) == b"123^^^HOSP^MR"
    assert _field(message, b"PV1", 2) == b""
    assert _field(message, b"PID", 40) == b""


def test_each_patient_stays_on_one_connection_and_all_connections_are_used() -> None:
    feed = synthetic_feed(2000, seed=4)
    seen: dict[bytes, set[int]] = defaultdict(set)
    for message in feed:
        seen[_field(message, b"MSH", 4) + _field(message, b"PID", 3)].add(patient_connection(message, 8))
    assert all(len(connections) == 1 for connections in seen.values())
    assert set().union(*seen.values()) == set(range(8))
    assert sum(len(c) for c in seen.values()) == len(seen) > 100


def test_open_loop_source_numbers_messages_without_reuse() -> None:
    source = _Source(9, 50)
    control_ids = set()
    for i in range(50):
        control_ids.add(_field(_payload(source.message(i)), b"MSH", 10))
    assert control_ids == {f"S9N{i + 1}".encode() for i in range(50)}
    # Past the pool a message is an old one under a new control id (the closed loop's reuse).
    reused = _payload(source.message(50))
    assert _field(reused, b"MSH", 10) == b"S9N51"
    assert _field(reused, b"PID", 3) == _field(_payload(source.message(0)), b"PID", 3)


def test_open_schedules_send_every_message_once_in_feed_order() -> None:
    source = _Source(2, 600)
    schedules = open_schedules(source, 600, 8)
    assert sorted(k for mine in schedules for k in mine) == list(range(600))
    assert all(mine == sorted(mine) for mine in schedules)
    assert all(source.connection_of(k, 8) == c for c, mine in enumerate(schedules) for k in mine)
