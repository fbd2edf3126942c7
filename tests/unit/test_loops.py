"""The one stop-and-backoff loop of background work (`services.lifecycle`): `Backoff`, `pause`
and `repeat`, which the relays, the consumer, the conformance worker, the dispatcher and
the periodic chores all use."""

from __future__ import annotations

import asyncio

import pytest

from services import lifecycle
from services.lifecycle import Backoff


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2


def test_backoff_jitter_adds_at_most_its_share() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.5)
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert base <= backoff.next() <= base * 1.5


async def test_repeat_survives_failing_rounds_and_waits_as_told(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
        waits.append(seconds)

    monkeypatch.setattr(lifecycle, "pause", no_wait)
    stop = asyncio.Event()
    outcomes: list[float | Exception] = [OSError("db away"), OSError("db away"), 0.0, 3.0, OSError("again")]

    async def step() -> float:
        outcome = outcomes.pop(0)
        if not outcomes:
            stop.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    await lifecycle.repeat(stop, step, what="test", backoff=Backoff(0.5, 5.0))
    # Two failures back off (0.5, 1.0); a success resets it; a round says its own wait; the
    # failure after the success starts from the first wait again.
    assert waits == [0.5, 1.0, 0.0, 3.0, 0.5]


async def test_pause_ends_at_stop_or_wake() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    wake.set()
    await asyncio.wait_for(lifecycle.pause(stop, 3600, wake), 5)  # would hang for an hour otherwise
    stop.set()
    await asyncio.wait_for(lifecycle.pause(stop, 3600), 5)


async def test_every_runs_a_chore_again_after_it_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "pause", _no_wait)
    stop, calls = asyncio.Event(), []

    async def chore() -> None:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        raise RuntimeError("the database is away")

    await lifecycle.every(stop, 60.0, chore, "chore")
    assert len(calls) == 3


async def _no_wait(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    return None
