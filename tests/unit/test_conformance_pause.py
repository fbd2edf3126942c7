"""`adt_listener.conformance.pause_after`: how long the conformance worker rests between rounds."""

from __future__ import annotations

import pytest

from adt_listener.conformance import pause_after


def pause(checked: int, *, elapsed_s: float, cpu_s: float) -> float:
    """A worker of the defaults: batches of 5, a 1 s interval, 5 checks a second, 5 % of a CPU."""
    return pause_after(checked, batch=5, elapsed_s=elapsed_s, cpu_s=cpu_s, interval_s=1.0, max_per_s=5.0,
                       cpu_share=0.05)


def test_a_backlog_is_worked_at_once_when_the_checks_are_cheap() -> None:
    # 5 checks in 1.2 s of wall time with 10 ms of CPU: both caps already met.
    assert pause(5, elapsed_s=1.2, cpu_s=0.01) == 0.0


def test_without_a_backlog_the_worker_waits_its_interval() -> None:
    assert pause(0, elapsed_s=0.0, cpu_s=0.0) == 1.0


def test_the_rate_cap_holds_when_checks_are_fast() -> None:
    # 5 checks in 0.05 s: at most 5 a second, so the round must last one second in all.
    assert pause(5, elapsed_s=0.05, cpu_s=0.001) == pytest.approx(0.95)


def test_the_cpu_share_holds_on_a_slow_host() -> None:
    # 5 checks of 40 ms each: 0.2 s of CPU is 4 s of wall time at 5 % of one CPU.
    assert pause(5, elapsed_s=0.25, cpu_s=0.2) == pytest.approx(3.75)
    # the same checks at 13 ms each (a fast host): 1.3 s a round, ~3.8 checks a second
    assert pause(5, elapsed_s=0.07, cpu_s=0.065) == pytest.approx(1.23)


def test_the_share_must_be_a_share() -> None:
    from adt_listener.conformance import ConformanceWorker

    with pytest.raises(ValueError, match="cpu_share"):
        ConformanceWorker(None, cpu_share=0.0)  # type: ignore[arg-type]
