"""The outbox relay against the real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.events import DerivedEvents
from adt_listener.intake import IntakePolicy, intake
from bench.synthetic import synthetic_feed
from services import metrics
from services.bus import KafkaPublisher, MemoryPublisher
from services.db import create_engine
from services.outbox import OutboxRelay, stop_with_last_publish
from tests.conftest import Broker
from tests.kafka_util import read_topic


async def add_rows(engine: AsyncEngine, topic: str, n: int, *, keys: int = 4) -> list[bytes]:
    payloads = [f"event-{i}".encode() for i in range(n)]
    async with engine.begin() as conn:
        for i, payload in enumerate(payloads):
            await conn.execute(
                text("INSERT INTO outbox (topic, key, payload, event_id) VALUES (:t, :k, :p, :e)"),
                {"t": topic, "k": f"patient-{i % keys}", "p": payload, "e": uuid.uuid4()},
            )
    return payloads


async def outbox_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM outbox")) or 0)


async def test_relay_publishes_in_order_and_empties_outbox(database_url: str, broker: Broker) -> None:
    engine = create_engine(database_url)
    topic = f"relay.{uuid.uuid4().hex[:8]}"
    payloads = await add_rows(engine, topic, 50)
    publisher = KafkaPublisher(broker.bootstrap)
    relay = OutboxRelay(engine, publisher, batch=7)
    while await relay.publish_once():
        pass
    assert await outbox_count(engine) == 0
    records = await read_topic(broker.bootstrap, topic, expect=50)
    assert len(records) == 50
    for k in range(4):
        key = f"patient-{k}".encode()
        assert [r.value for r in records if r.key == key] == [p for i, p in enumerate(payloads) if i % 4 == k]
        assert all(dict(r.headers)["event_id"] for r in records)
    await publisher.close()
    await engine.dispose()


async def test_broker_outage_keeps_rows_until_it_returns(database_url: str) -> None:
    engine = create_engine(database_url)
    publisher = MemoryPublisher(available=False)
    relay = OutboxRelay(engine, publisher, poll_interval_s=0.05, max_backoff_s=0.1)
    await add_rows(engine, "t", 10)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.5)
    assert await outbox_count(engine) == 10 and publisher.records == []
    publisher.available = True
    for _ in range(100):
        if await outbox_count(engine) == 0:
            break
        await asyncio.sleep(0.05)
    assert [r.value for r in publisher.records] == [f"event-{i}".encode() for i in range(10)]
    stop.set()
    await task
    await engine.dispose()


async def test_shutdown_publishes_rows_committed_after_the_last_round(database_url: str) -> None:
    """A service's stop (services.outbox.stop_with_last_publish): rows committed during the
    drain, with nobody waking the relay, are published before the service exits, by the
    relay that was leading (which a stopped relay no longer is)."""
    engine = create_engine(database_url)
    publisher = MemoryPublisher()
    relay = OutboxRelay(engine, publisher, poll_interval_s=30.0)
    idle = OutboxRelay(engine, MemoryPublisher(), poll_interval_s=30.0)  # never leads: no last attempt
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop))]
    for _ in range(60):
        if relay.is_leader:
            break
        await asyncio.sleep(0.05)
    tasks.append(asyncio.create_task(idle.run(stop)))  # started second: it finds the lock taken
    await asyncio.sleep(0.1)
    assert relay.is_leader and not idle.is_leader
    await asyncio.sleep(0.2)  # the leader's first round found nothing; its next poll is 30 s away
    await add_rows(engine, "t", 5)
    await stop_with_last_publish(stop, tasks, (relay, idle))
    assert all(t.done() for t in tasks) and not relay.is_leader
    assert [r.value for r in publisher.records] == [f"event-{i}".encode() for i in range(5)]
    assert await outbox_count(engine) == 0
    await engine.dispose()


async def test_only_one_relay_leads(database_url: str) -> None:
    engine_a, engine_b = create_engine(database_url), create_engine(database_url)
    a = OutboxRelay(engine_a, MemoryPublisher(), poll_interval_s=0.05)
    b = OutboxRelay(engine_b, MemoryPublisher(), poll_interval_s=0.05)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await asyncio.sleep(0.3)
    task_b = asyncio.create_task(b.run(stop_b))
    await asyncio.sleep(0.3)
    assert (a.is_leader, b.is_leader) == (True, False)
    # The leader goes away: its lock is released and the other one takes over.
    stop_a.set()
    await task_a
    for _ in range(60):
        if b.is_leader:
            break
        await asyncio.sleep(0.1)
    assert b.is_leader
    stop_b.set()
    await task_b
    await engine_a.dispose()
    await engine_b.dispose()


async def test_a_wake_publishes_without_waiting_for_the_poll(database_url: str) -> None:
    engine = create_engine(database_url)
    publisher = MemoryPublisher()
    relay = OutboxRelay(engine, publisher, poll_interval_s=30.0, linger_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    for _ in range(50):
        if relay.is_leader:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # the first (empty) round is done: the relay now waits for a wake
    await add_rows(engine, "t", 5)
    relay.wake()
    for _ in range(40):
        if len(publisher.records) == 5:
            break
        await asyncio.sleep(0.05)
    assert [r.value for r in publisher.records] == [f"event-{i}".encode() for i in range(5)]
    assert metrics.OUTBOX_BACKLOG._value.get() == 0
    stop.set()
    await task
    await engine.dispose()


async def test_event_relay_orphan_sweep_keeps_a_row_committed_between_its_reads(database_url: str) -> None:
    """The adt.events source drops queue rows whose message is missing. It looks for them
    only after finding nothing to publish, so a valid row may commit between the two
    reads: the sweep must not take (and so drop) that row."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    other = await asyncpg.connect(dsn)
    try:
        orphan = await conn.fetchval(
            "INSERT INTO adt_event_queue (message_id) VALUES ($1) RETURNING id", uuid.uuid4()
        )
        decided = intake(synthetic_feed(1, seed=77)[0], received_at=dt.datetime.now(dt.UTC), policy=IntakePolicy())

        class Racing:
            """The real connection; a valid message and its queue row commit, from another
            connection, right after the first read came back empty."""

            def __init__(self) -> None:
                self.reads = 0
                self.valid: int | None = None

            async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                self.reads += 1
                if self.reads == 1:
                    await other.execute(
                        "INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, ack_code,"
                        " ack, raw, received_at) VALUES ($1, 'mllp', 'test', 'F', $2, 'AA', $3, $4, now())",
                        decided.message_id, decided.control_id, decided.ack, decided.raw,
                    )
                    self.valid = await other.fetchval(
                        "INSERT INTO adt_event_queue (message_id) VALUES ($1) RETURNING id", decided.message_id
                    )
                return rows

        racing = Racing()
        source = DerivedEvents("adt.events", IntakePolicy(), in_process=True)
        ids, records = await source.fetch(racing, 100)
        assert racing.reads == 2  # the read (the orphan has no message to join), then the sweep
        assert ids == [orphan] and records == []
        assert racing.valid is not None and racing.valid not in ids
        # ... and the next round publishes the valid row.
        ids, records = await source.fetch(conn, 100)
        assert ids == [racing.valid] and len(records) == 1
    finally:
        await conn.close()
        await other.close()
