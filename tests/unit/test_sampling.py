"""sample_selected: deterministic per message id, honouring the mode and the rate."""

from __future__ import annotations

import uuid

import pytest

from adt_listener.conformance import sample_selected

IDS = [uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128) for i in range(20_000)]


def test_off_and_all_ignore_the_rate() -> None:
    mid = uuid.uuid4()
    assert sample_selected("off", 1.0, mid) is False
    assert sample_selected("all", 0.0, mid) is True


def test_rate_zero_and_one() -> None:
    assert not any(sample_selected("sampled", 0.0, i) for i in IDS[:1000])
    assert all(sample_selected("sampled", 1.0, i) for i in IDS[:1000])


@pytest.mark.parametrize("rate", [0.05, 0.25, 0.5])
def test_fraction_selected_matches_the_rate(rate: float) -> None:
    selected = sum(sample_selected("sampled", rate, i) for i in IDS)
    # 20 000 draws: the binomial standard deviation is at most ~0.0035; allow 4 of them.
    assert abs(selected / len(IDS) - rate) < 0.015


def test_time_ordered_ids_are_sampled_evenly() -> None:
    # UUIDv7-like: identical high bits (same millisecond), sequential low bits.
    ids = [uuid.UUID(int=(0x0190_0000_0000_7000 << 64) | (0x8000 << 48) | n) for n in range(10_000)]
    selected = sum(sample_selected("sampled", 0.1, i) for i in ids)
    assert 800 < selected < 1200


def test_decision_is_stable_and_monotonic_in_the_rate() -> None:
    for i in IDS[:2000]:
        first = sample_selected("sampled", 0.3, i)
        assert sample_selected("sampled", 0.3, uuid.UUID(str(i))) is first
        if first:  # raising the rate never drops a message already selected
            assert sample_selected("sampled", 0.6, i)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_outside_zero_one_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError):
        sample_selected("sampled", rate, uuid.uuid4())


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        sample_selected("sometimes", 0.5, uuid.uuid4())  # type: ignore[arg-type]
