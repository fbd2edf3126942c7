"""The group commit's linger (`adt_listener.store`): under load a writer waits before it takes
the queue, so what arrives meanwhile is committed with it; at a low rate nobody waits."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.intake import IntakePolicy, intake
from adt_listener.settings import ListenerSettings
from adt_listener.store import Custody, MessageStore, Stored, Topics
from bench.synthetic import synthetic_feed
from services.db import create_engine

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=3)
    yield eng
    await eng.dispose()


def custody(seed: int, n: int) -> list[Custody]:
    return [Custody(intake(raw, received_at=NOW, policy=IntakePolicy(), with_event=False), "mllp", "test", False, NOW)
            for raw in synthetic_feed(n, seed=seed)]


async def started(engine: AsyncEngine, linger_s: float, sizes: list[int]) -> MessageStore:
    """A store whose commits' sizes are recorded in ``sizes``."""
    store = MessageStore(engine, Topics("adt.events.t", "adt.deadletter.t"), writers=2, linger_s=linger_s)
    write = store._write_batch

    async def recorded(lane: Any, batch: Sequence[Custody]) -> list[Stored]:
        sizes.append(len(batch))
        return await write(lane, list(batch))

    store._write_batch = recorded  # type: ignore[method-assign]
    await store.start()
    return store


def submit(store: MessageStore, item: Custody) -> asyncio.Future[list[Stored] | None]:
    done: asyncio.Future[list[Stored] | None] = asyncio.get_running_loop().create_future()
    store.submit([item], done.set_result)
    return done


async def test_under_load_what_arrives_while_a_writer_lingers_is_committed_with_it(engine: AsyncEngine) -> None:
    sizes: list[int] = []
    store = await started(engine, 0.5, sizes)
    try:
        items = custody(8101, 8)
        assert not store.lingering()  # nothing came yet
        warm = [submit(store, item) for item in items[:5]]  # five at once: faster than one per 0.5 s
        assert store.lingering()
        assert all(r is not None for r in await asyncio.gather(*warm))
        first = submit(store, items[5])
        for _ in range(5):
            await asyncio.sleep(0)  # a writer takes it and waits
        rest = [submit(store, item) for item in items[6:]]
        results = await asyncio.gather(first, *rest)
    finally:
        await store.stop()
    assert all(r is not None and not r[0].duplicate for r in results)
    assert sizes[-1] == 3  # the one taken, and the two that came while it waited
    assert sum(sizes) == 8


async def test_without_a_linger_a_writer_commits_what_it_took_at_once(engine: AsyncEngine) -> None:
    sizes: list[int] = []
    store = await started(engine, 0.0, sizes)
    try:
        items = custody(8102, 8)
        await asyncio.gather(*(submit(store, item) for item in items[:5]))
        assert not store.lingering()
        first = submit(store, items[5])
        for _ in range(5):
            await asyncio.sleep(0)
        rest = [submit(store, item) for item in items[6:]]
        await asyncio.gather(first, *rest)
    finally:
        await store.stop()
    assert 1 in sizes[-2:] and sum(sizes) == 8  # the one taken went alone


def test_the_setting_is_in_milliseconds_and_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ListenerSettings().commit_linger_ms == 2.0
    monkeypatch.setenv("WPC_COMMIT_LINGER_MS", "0")
    assert ListenerSettings().commit_linger_ms == 0.0
