"""A committed row reaches its relay's leader without waiting for the poll (migration 0012).

The relays here poll once an hour: a row is published within the test only if the
commit woke the leader, by the in-process wake-up or by PostgreSQL's notification when
another process (another replica) wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.events import EVENT_QUEUE_CHANNEL, DerivedEvents
from adt_listener.intake import IntakePolicy, intake
from bench.synthetic import synthetic_feed
from services.bus import MemoryPublisher
from services.db import create_engine
from services.outbox import INSERT, Outbox, OutboxRelay

ENROLLMENT = Outbox.of("enrollment", ["enrollment.candidates.t"])
NOTIFIER = Outbox.of("notifier", ["notifications.deadletter.t"])
HOUR = 3600.0


def _dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


async def _write(database_url: str, owner: Outbox, topic: str, payload: bytes) -> None:
    """One outbox row, committed by a connection of its own (as another process would)."""
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        row = owner.row(topic, "k", payload, uuid.uuid4())
        await conn.execute(INSERT.replace(":service", "$1").replace(":topic", "$2").replace(":key", "$3")
                           .replace(":payload", "$4").replace(":event_id", "$5"),
                           row["service"], row["topic"], row["key"], row["payload"], row["event_id"])
    finally:
        await conn.close()


async def _until(predicate: object, rounds: int = 200) -> None:
    for _ in range(rounds):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _leading(relay: OutboxRelay) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await _until(lambda: relay.is_leader)
        assert relay.is_leader
        yield
    finally:
        stop.set()
        await task


async def test_a_row_another_process_commits_is_published_without_the_poll(database_url: str) -> None:
    engine: AsyncEngine = create_engine(database_url)
    publisher = MemoryPublisher()
    relay = OutboxRelay(engine, publisher, owner=ENROLLMENT, lock_key=3, poll_interval_s=HOUR)
    try:
        async with _leading(relay):
            # The first row is woken in process (the writer is the relay's own service): once it
            # is out, the leader has read the table and waits for the next wake-up.
            await _write(database_url, ENROLLMENT, "enrollment.candidates.t", b"first")
            relay.wake()
            await _until(lambda: len(publisher.records) == 1)
            assert [r.value for r in publisher.records] == [b"first"]
            # Another replica's commit: nobody calls wake(); the notification does.
            await _write(database_url, ENROLLMENT, "enrollment.candidates.t", b"second")
            await _until(lambda: len(publisher.records) == 2)
        assert [r.value for r in publisher.records] == [b"first", b"second"]
    finally:
        await engine.dispose()


async def test_another_service_rows_are_not_this_relay_business(database_url: str) -> None:
    """The notifier's rows notify the notifier's relay; the enrollment relay publishes
    only its own, and still gets its own after them."""
    engine = create_engine(database_url)
    enrollment, notifier = MemoryPublisher(), MemoryPublisher()
    mine = OutboxRelay(engine, enrollment, owner=ENROLLMENT, lock_key=3, poll_interval_s=HOUR)
    theirs = OutboxRelay(engine, notifier, owner=NOTIFIER, lock_key=4, poll_interval_s=HOUR)
    try:
        async with _leading(mine), _leading(theirs):
            await _write(database_url, NOTIFIER, "notifications.deadletter.t", b"theirs")
            await _until(lambda: len(notifier.records) == 1)
            await _write(database_url, ENROLLMENT, "enrollment.candidates.t", b"mine")
            await _until(lambda: len(enrollment.records) == 1)
        assert [r.value for r in notifier.records] == [b"theirs"]
        assert [r.value for r in enrollment.records] == [b"mine"]
    finally:
        await engine.dispose()


async def test_a_message_another_listener_stored_is_derived_and_published_without_the_poll(
    database_url: str,
) -> None:
    """The adt.events relay's leader may be another listener replica than the one that took
    the message: the queue's notification wakes it."""
    engine = create_engine(database_url)
    publisher = MemoryPublisher()
    relay = OutboxRelay(engine, publisher, lock_key=2, poll_interval_s=HOUR,
                        source=DerivedEvents("adt.events.t", IntakePolicy(), in_process=True),
                        listen=(EVENT_QUEUE_CHANNEL, None))
    decided = intake(synthetic_feed(1, seed=4141)[0], received_at=dt.datetime.now(dt.UTC), policy=IntakePolicy())
    try:
        async with _leading(relay):
            conn = await asyncpg.connect(_dsn(database_url))
            try:
                async with conn.transaction():  # as the listener's store: message and queue row, one commit
                    await conn.execute(
                        "INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, ack_code,"
                        " ack, raw, received_at, event_id)"
                        " VALUES ($1, 'mllp', 'test', 'F', $2, 'AA', $3, $4, now(), $5)",
                        decided.message_id, decided.control_id, decided.ack, decided.raw, decided.event_id,
                    )
                    await conn.execute("INSERT INTO adt_event_queue (message_id) VALUES ($1)", decided.message_id)
            finally:
                await conn.close()
            await _until(lambda: len(publisher.records) == 1)
        assert [r.topic for r in publisher.records] == ["adt.events.t"]
        assert dict(publisher.records[0].headers)["event_id"] == str(decided.event_id).encode()
    finally:
        await engine.dispose()
