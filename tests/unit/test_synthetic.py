"""The synthetic ADT feed: deterministic, unique control ids, parseable, a realistic mix."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from bench.synthetic import TRIGGER_WEIGHTS, epoch_ending, synthetic_feed


def _field(message: bytes, segment: str, n: int) -> str:
    for line in message.decode().split("\r"):
        fields = line.split("|")
        if fields[0] == segment:
            # MSH-1 is the field separator itself, so MSH-n sits one place left of other segments.
            return fields[n - 1] if segment == "MSH" else (fields[n] if n < len(fields) else "")
    raise AssertionError(f"no {segment} segment")


def _segments(message: bytes) -> list[str]:
    return [line.split("|", 1)[0] for line in message.decode().split("\r") if line]


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert synthetic_feed(200, seed=7) == synthetic_feed(200, seed=7)
    assert synthetic_feed(200, seed=7) != synthetic_feed(200, seed=8)


def test_prefix_of_a_longer_feed() -> None:
    assert synthetic_feed(500, seed=3)[:100] == synthetic_feed(100, seed=3)


def test_control_ids_unique_within_and_across_seeds() -> None:
    ids: list[str] = []
    for seed in (0, 1, 11, 111):
        ids.extend(_field(m, "MSH", 10) for m in synthetic_feed(5000, seed=seed))
    assert len(ids) == len(set(ids)) == 20_000


def test_segments_end_with_carriage_return_and_header_fields() -> None:
    for m in synthetic_feed(300, seed=1, facilities=("ALPHA", "BETA")):
        assert m.endswith(b"\r") and b"\n" not in m
        assert _field(m, "MSH", 4) in ("ALPHA", "BETA")
        assert _field(m, "MSH", 11) == "P"
        assert _field(m, "MSH", 12) == "2.5.1"


def test_every_message_parses_with_hl7apy_and_has_the_core_segments() -> None:
    for m in synthetic_feed(400, seed=5):
        parsed = parse_message(m.decode(), validation_level=VALIDATION_LEVEL.TOLERANT)
        assert parsed.msh.msh_12.value == "2.5.1"
        names = _segments(m)
        assert names[:2] == ["MSH", "EVN"]
        assert "PID" in names
        trigger = _field(m, "MSH", 9).split("^")[1]
        if trigger != "A31":
            assert "PV1" in names


def test_patient_identifiers_and_address() -> None:
    feed = synthetic_feed(2000, seed=2)
    medi_cal = sum("^^^MEDI-CAL^MA" in _field(m, "PID", 3) for m in feed)
    assert 0.45 < medi_cal / len(feed) < 0.75
    for m in feed[:200]:
        mrn = _field(m, "PID", 3).split("~")[0].split("^")
        assert mrn[3] == _field(m, "MSH", 4) and mrn[4] == "MR"
        assert _field(m, "PID", 11).split("^")[8] == "06037"


def test_trigger_mix_roughly_as_specified() -> None:
    feed = synthetic_feed(20_000, seed=9)
    mix = Counter(_field(m, "MSH", 9).split("^")[1] for m in feed)
    for trigger, share in TRIGGER_WEIGHTS.items():
        assert mix[trigger] / len(feed) == pytest.approx(share, abs=0.03), trigger


def test_visit_events_in_plausible_order() -> None:
    """No discharge, transfer or update of a visit before the message that opened it."""
    opened: set[str] = set()
    closed: set[str] = set()
    for m in synthetic_feed(5000, seed=4):
        trigger = _field(m, "MSH", 9).split("^")[1]
        if trigger in ("A11", "A31"):
            continue
        visit = _field(m, "PV1", 19).split("^")[0]
        if trigger in ("A01", "A04"):
            assert visit not in opened
            opened.add(visit)
        else:
            assert visit in opened, (trigger, visit)
        if trigger == "A03":
            assert visit not in closed
            assert _field(m, "PV1", 45)
            closed.add(visit)
        elif trigger == "A13":
            closed.discard(visit)


def test_diagnosis_codes_include_the_program_codes() -> None:
    codes = {
        _field(line.encode(), "DG1", 3).split("^")[0]
        for m in synthetic_feed(3000, seed=6)
        for line in m.decode().split("\r")
        if line.startswith("DG1|")
    }
    assert {"F20.9", "F10.20", "E11.9", "J44.1", "Z59.00", "T40.1X1A"} <= codes


def test_negative_n_is_refused() -> None:
    with pytest.raises(ValueError):
        synthetic_feed(-1)


def _msh7(message: bytes) -> dt.datetime:
    return dt.datetime.strptime(_field(message, "MSH", 7), "%Y%m%d%H%M%S%z")


def test_the_default_clock_is_a_fixed_morning_of_2025() -> None:
    times = [_msh7(m) for m in synthetic_feed(50, seed=3)]
    assert all(t.year == 2025 and t.utcoffset() == dt.timedelta(hours=-8) for t in times)


def test_a_feed_dated_up_to_now_ends_just_before_now() -> None:
    """`--background current` of `wpc bench pipeline`: every message dated before the moment
    given, the last within a few minutes of it, so every event is current to the rules."""
    at = dt.datetime(2026, 12, 2, 14, 0, tzinfo=dt.UTC)
    n = 3000
    feed = synthetic_feed(n, seed=5, epoch=epoch_ending(at, n))
    times = [_msh7(m) for m in feed]
    assert max(times) <= at
    assert at - max(times) < dt.timedelta(minutes=3)
    assert at - min(times) < dt.timedelta(hours=4)  # 3,000 messages about 4 s apart
    # Only the clock moved: the same patients and triggers as the default feed's.
    default = synthetic_feed(n, seed=5)
    assert [_field(m, "MSH", 9) for m in feed] == [_field(m, "MSH", 9) for m in default]
    assert [_field(m, "PID", 3) for m in feed] == [_field(m, "PID", 3) for m in default]


def test_an_aware_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        synthetic_feed(1, epoch=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
