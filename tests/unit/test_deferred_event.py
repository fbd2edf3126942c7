"""The ACK path decides without building the event; the event is derived from what was
stored. Both halves must agree with deciding and building at once, for every message."""

from __future__ import annotations

import datetime as dt
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adt_listener.events import derive_batch, derive_event
from adt_listener.intake import IntakePolicy, intake
from bench.synthetic import synthetic_feed
from schemas.adt_event import AdtEventV1

NOW = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
POLICY = IntakePolicy()
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"

# Times the normalizer warns about (W 102), in fields it reads in a known order.
BAD_TIMES = (
    b"MSH|^~\\&|APP|FAC|WPC|WPC|2024013199||ADT^A01|C9|P|2.5\r"
    b"EVN|A01|notatime||||20x4\r"
    b"PID|1||MRN-1^^^HOSP^MR||DOE^JANE||19801302|F\r"
    b"PV1|1|I|W1^1^A" + b"|" * 41 + b"20240230|20240101120000+2500\r"
)


def _corpus() -> list[bytes]:
    raws = [*synthetic_feed(300, seed=41), BAD_TIMES]
    if SAMPLES.is_dir():
        raws += [p.read_bytes() for p in sorted(SAMPLES.rglob("*")) if p.is_file() and p.suffix != ".md"]
    return raws


@pytest.mark.parametrize("raw", _corpus(), ids=lambda r: f"{zlib.crc32(r):08x}")  # the same in every process
def test_deciding_without_the_event_answers_the_same(raw: bytes) -> None:
    full = intake(raw, received_at=NOW, policy=POLICY)
    lean = intake(raw, received_at=NOW, policy=POLICY, with_event=False)
    assert lean.event is None
    assert (lean.ack_code, lean.findings, lean.send_ack) == (full.ack_code, full.findings, full.send_ack)
    assert (lean.event_id, lean.patient_key, lean.control_id) == (full.event_id, full.patient_key, full.control_id)
    if full.event is not None:
        # What the relay derives later from the stored row is the event built at once.
        derived = derive_event(raw, message_id=full.message_id, received_at=NOW, policy=POLICY)
        assert AdtEventV1.model_validate_json(derived) == full.event


def test_bad_times_are_warned_about_in_the_ack_without_the_event() -> None:
    lean = intake(BAD_TIMES, received_at=NOW, policy=POLICY, with_event=False)
    assert lean.ack_code == "AA"
    assert [f.location for f in lean.findings if f.code == 102] == [
        "PID-7", "MSH-7", "EVN-2", "EVN-6", "PV1-44", "PV1-45"
    ]
    assert b"PV1^1^45" in lean.ack


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_deciding_without_the_event_agrees_on_any_bytes(raw: bytes) -> None:
    full = intake(raw, received_at=NOW, policy=POLICY)
    lean = intake(raw, received_at=NOW, policy=POLICY, with_event=False)
    assert (lean.ack_code, lean.findings) == (full.ack_code, full.findings)


def test_derive_batch_isolates_a_message_without_event() -> None:
    good = synthetic_feed(1, seed=5)[0]
    ids = [uuid.uuid4(), uuid.uuid4()]
    out = derive_batch([(ids[0], b"not hl7 at all", NOW), (ids[1], good, NOW)], POLICY)
    assert out[0] is None and out[1] is not None
    assert AdtEventV1.model_validate_json(out[1]).message_id == ids[1]
