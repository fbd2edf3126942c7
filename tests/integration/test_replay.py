"""The relay keeps what consumers have not read, and publishes it again when the broker
loses it (services.replay): real PostgreSQL, the in-memory broker fake (its `lose` is a
broker that came back empty), and the real Tansu for the adapter's side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services import replay
from services.bus import MemoryPublisher, Record
from services.db import create_engine
from services.outbox import OutboxRelay
from services.replay import Retention
from tests.e2e.helpers import eventually

TOPIC, DEADLETTER = "t.read", "t.deadletter"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = create_engine(database_url)
    yield e
    await e.dispose()


async def add(engine: AsyncEngine, topic: str, values: list[str]) -> None:
    async with engine.begin() as conn:
        for i, v in enumerate(values):
            await conn.execute(
                text("INSERT INTO outbox (topic, key, payload, event_id) VALUES (:t, :k, :p, :e)"),
                {"t": topic, "k": f"patient-{i % 3}", "p": v.encode(), "e": uuid.uuid4()},
            )


async def scalar(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql)) or 0)


class Running:
    def __init__(self, relay: OutboxRelay) -> None:
        self.relay, self.stop = relay, asyncio.Event()
        self.task = asyncio.create_task(relay.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await self.task


def retention(**kw: float) -> Retention:
    values: dict[str, float] = {"check_interval_s": 0.05, "settle_s": 0.0}
    values.update(kw)
    return Retention({TOPIC: ("g1", "g2")}, max_rows=int(values.pop("max_rows", 1000)), **values)


def values_by_key(records: list[Record]) -> dict[bytes | None, list[bytes]]:
    out: dict[bytes | None, list[bytes]] = {}
    for r in records:
        out.setdefault(r.key, []).append(r.value)
    return out


async def test_a_row_is_kept_until_every_reading_group_has_committed_past_it(engine: AsyncEngine) -> None:
    broker = MemoryPublisher()
    running = Running(OutboxRelay(engine, broker, poll_interval_s=0.02, retention=retention()))
    try:
        await add(engine, TOPIC, [f"v{i}" for i in range(6)])
        await add(engine, DEADLETTER, ["d0", "d1"])
        await eventually(lambda: scalar(engine, "SELECT count(*) FROM outbox_sent"), 5, "nothing kept")
        await eventually(lambda: len(broker.records) == 8, 5, "not all published")
        assert await scalar(engine, "SELECT count(*) FROM outbox") == 0
        # Kept: the read topic's rows, where the broker put them; the dead letters: forgotten.
        kept = await scalar(engine, f"SELECT count(*) FROM outbox_sent WHERE topic = '{TOPIC}'")
        assert kept == 6 and await scalar(engine, "SELECT count(*) FROM outbox_sent") == 6

        logs = {tp: len(log) for tp, log in broker.logs.items() if tp[0] == TOPIC}
        for (topic, partition), end in logs.items():
            broker.commit("g1", topic, partition, end)  # g1 read everything
        await asyncio.sleep(0.3)  # several checks: g2 has read nothing
        assert await scalar(engine, "SELECT count(*) FROM outbox_sent") == 6

        (tp, end), *_ = sorted(logs.items())
        broker.commit("g2", tp[0], tp[1], end - 1)  # g2 read all but the last of one partition
        left = 6 - end + 1
        await eventually(lambda: _equals(engine, "SELECT count(*) FROM outbox_sent", left), 5, "not trimmed")
    finally:
        await running.close()


async def _equals(engine: AsyncEngine, sql: str, n: int) -> bool:
    return await scalar(engine, sql) == n


async def test_a_broker_that_lost_its_records_gets_the_unread_ones_again_in_order(engine: AsyncEngine) -> None:
    broker = MemoryPublisher()
    relay = OutboxRelay(engine, broker, poll_interval_s=0.02, retention=retention(settle_s=0.1))
    running = Running(relay)
    try:
        await add(engine, TOPIC, [f"a{i}" for i in range(9)])
        await eventually(lambda: len(broker.records) == 9, 5, "not published")
        for (topic, partition), log in list(broker.logs.items()):
            broker.commit("g1", topic, partition, len(log))  # g1 read everything, g2 nothing yet
        await asyncio.sleep(0.2)
        assert await scalar(engine, "SELECT count(*) FROM outbox_sent") == 9
        losses = replay.LOSSES.labels(journal="outbox_sent")._value.get()

        broker.available = False  # the broker goes down; records keep coming
        await add(engine, TOPIC, ["b0", "b1", "b2"])
        await asyncio.sleep(0.3)
        broker.lose()  # it comes back empty (a new cluster id), the groups' offsets gone
        broker.available = True
        await eventually(lambda: sum(len(log) for log in broker.logs.values()) == 12, 5,
                         "the unread records were not published again")
        assert replay.LOSSES.labels(journal="outbox_sent")._value.get() == losses + 1
        now = [r for log in broker.logs.values() for r in log]
        assert sorted(r.value for r in now) == sorted([f"a{i}".encode() for i in range(9)] + [b"b0", b"b1", b"b2"])
        # Each key in the order it was first published in: the kept rows, then the new ones.
        for key, values in values_by_key(now).items():
            assert values == sorted(values, key=lambda v: (v[:1] != b"a", int(v[1:]))), key
        # The kept rows now point where the new broker put them.
        async with engine.connect() as conn:
            rows = (await conn.execute(text('SELECT payload, partition, "offset" FROM outbox_sent'))).all()
        assert len(rows) == 12
        for payload, partition, offset in rows:
            assert broker.logs[(TOPIC, partition)][offset].value == bytes(payload)
    finally:
        await running.close()


async def test_kept_rows_are_bounded_dropping_the_oldest(engine: AsyncEngine) -> None:
    broker = MemoryPublisher()
    running = Running(OutboxRelay(engine, broker, poll_interval_s=0.02, retention=retention(max_rows=4)))
    try:
        dropped = replay.DROPPED.labels(journal="outbox_sent")._value.get()
        await add(engine, TOPIC, [f"v{i}" for i in range(10)])
        await eventually(lambda: _equals(engine, "SELECT count(*) FROM outbox_sent", 4), 5, "not bounded")
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT payload FROM outbox_sent ORDER BY id"))
            kept = [bytes(p) for p in result.scalars()]
        assert kept == [b"v6", b"v7", b"v8", b"v9"]
        assert replay.DROPPED.labels(journal="outbox_sent")._value.get() == dropped + 6
    finally:
        await running.close()
