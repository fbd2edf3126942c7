"""Each service owns its outbox (issue 11): one database, one ``outbox`` table, but each
service's relay publishes its own rows and topics only, a record of a topic a service does
not own is refused when written and when published, and rows from before the ``service``
column are adopted by the relay whose topics they name."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.bus import MemoryPublisher, Record
from services.db import create_engine, driver_connection
from services.outbox import INSERT, ForeignTopic, Outbox, OutboxRelay, OutboxTable
from services.replay import Kept, Retention
from tests.e2e.helpers import eventually

LISTENER = Outbox.of("listener", ["adt.deadletter.t"])
ENROLLMENT = Outbox.of("enrollment", ["enrollment.candidates.t", "enrollment.events.t"])


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def write(engine: AsyncEngine, outbox: Outbox, topic: str, n: int) -> None:
    async with engine.begin() as conn:
        for i in range(n):
            await conn.execute(text(INSERT), outbox.row(topic, f"k{i}", f"{topic}-{i}".encode(), uuid.uuid4()))


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql))).all()]


async def test_each_relay_publishes_its_own_service_rows_only(engine: AsyncEngine) -> None:
    await write(engine, LISTENER, "adt.deadletter.t", 3)
    await write(engine, ENROLLMENT, "enrollment.candidates.t", 2)
    await write(engine, ENROLLMENT, "enrollment.events.t", 2)
    await write(engine, LISTENER, "adt.deadletter.t", 1)
    listener_bus, enrollment_bus = MemoryPublisher(), MemoryPublisher()
    # Different lock keys: both lead at once, as the two services' relays do in production.
    relays = [OutboxRelay(engine, listener_bus, owner=LISTENER, lock_key=1, poll_interval_s=0.02),
              OutboxRelay(engine, enrollment_bus, owner=ENROLLMENT, lock_key=3, poll_interval_s=0.02)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        await eventually(lambda: _empty(engine), 10, "rows left in the outbox", interval_s=0.05)
        assert all(r.is_leader for r in relays)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert [r.value for r in listener_bus.records] == [f"adt.deadletter.t-{i}".encode() for i in (0, 1, 2, 0)]
    assert {r.topic for r in enrollment_bus.records} == ENROLLMENT.topics
    assert len(enrollment_bus.records) == 4


async def _empty(engine: AsyncEngine) -> bool:
    return (await rows(engine, "SELECT count(*) FROM outbox"))[0][0] == 0


async def test_a_relay_leaves_another_service_rows_alone(engine: AsyncEngine) -> None:
    await write(engine, ENROLLMENT, "enrollment.candidates.t", 2)
    relay = OutboxRelay(engine, MemoryPublisher(), owner=LISTENER)
    assert await relay.publish_once() == 0
    assert await rows(engine, "SELECT service, topic FROM outbox ORDER BY id") == [
        ("enrollment", "enrollment.candidates.t")] * 2


def test_a_foreign_topic_is_refused_when_written() -> None:
    with pytest.raises(ForeignTopic, match=r"the listener service may not publish to 'enrollment\.events\.t'"):
        LISTENER.row("enrollment.events.t", None, b"x", uuid.uuid4())
    assert LISTENER.row("adt.deadletter.t", None, b"x", uuid.uuid4())["service"] == "listener"


class _Stray:
    """A source (as the listener's derived events) that yields a record of another topic."""

    journal = "adt_event_sent"
    journal_scope = None

    def __init__(self) -> None:
        self.settled: list[int] = []

    async def start(self, driver: object) -> None: ...

    async def fetch(self, driver: object, limit: int) -> tuple[list[int], list[tuple[int, Record]]]:
        return [1], [(1, Record("enrollment.candidates.t", b"k", b"v"))]

    async def settle(self, driver: object, ids: Sequence[int], kept: Sequence[Kept]) -> None:
        self.settled.extend(ids)

    async def count(self, driver: object) -> int:
        return 1

    async def replayable(self, driver: object, after_id: int, limit: int) -> list[tuple[int, Record]]:
        return []


async def test_a_foreign_topic_is_refused_when_published(engine: AsyncEngine) -> None:
    bus, source = MemoryPublisher(), _Stray()
    relay = OutboxRelay(engine, bus, owner=LISTENER, source=source)
    with pytest.raises(ForeignTopic):
        await relay.publish_once()
    assert bus.records == [] and source.settled == []  # nothing sent, nothing forgotten


async def test_rows_from_before_the_service_column_are_adopted_by_their_topic_owner(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for topic in ("adt.deadletter.t", "enrollment.events.t", "nobody.t"):
            await conn.execute(text("INSERT INTO outbox (topic, key, payload, event_id) VALUES (:t, NULL, :p, :e)"),
                               {"t": topic, "p": topic.encode(), "e": uuid.uuid4()})
    bus = MemoryPublisher()
    relay = OutboxRelay(engine, bus, owner=ENROLLMENT, lock_key=3, poll_interval_s=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: _published(bus, 1), 10, "the old enrollment row was not published", interval_s=0.05)
    finally:
        stop.set()
        await task
    assert [r.topic for r in bus.records] == ["enrollment.events.t"]
    # The listener's old row waits for the listener's relay; one nobody owns stays, unpublished.
    assert await rows(engine, "SELECT service, topic FROM outbox ORDER BY id") == [
        (None, "adt.deadletter.t"), (None, "nobody.t")]


async def _published(bus: MemoryPublisher, n: int) -> bool:
    return len(bus.records) >= n


async def test_the_kept_journal_is_each_service_own(engine: AsyncEngine) -> None:
    """Published rows kept for a replay (`services.replay`) stay with their service: one
    relay's republish after a broker loss sends its own rows, not another service's."""
    retention = Retention({"adt.deadletter.t": ("g",), "enrollment.events.t": ("g",)}, check_interval_s=60)
    await write(engine, LISTENER, "adt.deadletter.t", 2)
    await write(engine, ENROLLMENT, "enrollment.events.t", 3)
    for owner in (LISTENER, ENROLLMENT):
        assert await OutboxRelay(engine, MemoryPublisher(), owner=owner, retention=retention).publish_once()
    assert await rows(engine, "SELECT service, count(*) FROM outbox_sent GROUP BY service ORDER BY service") == [
        ("enrollment", 3), ("listener", 2)]
    async with engine.connect() as conn:
        driver = await driver_connection(conn)
        again = await OutboxTable(LISTENER).replayable(driver, 0, 100)
    assert [record.topic for _id, record in again] == ["adt.deadletter.t"] * 2
