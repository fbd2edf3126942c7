"""The outbox relay: from the `outbox` table to Kafka, in order, at least once.

Writers put rows in `outbox` in the same statement as their domain rows. The relay
publishes them in id order and settles them once the broker acknowledged. If the
broker is down, rows wait and the relay retries with backoff; producers of rows
(the listener's ACKs) are not affected.

Each service owns its outbox (`Outbox`): the rows it writes carry its name in the
``service`` column and only its own topics (checked when written, `Outbox.check`), and
its own relay, under its own lock key, publishes them (`OutboxTable` reads
``WHERE service = ... AND topic = ANY(its topics)``). So the listener's process never
publishes an enrollment candidate, and each service's Kafka principal needs write
access to its own topics only (deploy/README.md). One table with a column rather than a
table per service: one set of statements (the settle, the replay journal), one migration,
and the services share one database today; the column is what the relays filter on,
indexed with the id they order by. Rows written before the column (revision 0008) are
adopted by the relay whose topics they name, when it starts leading.

Exactly one relay per service publishes at a time: leadership is a PostgreSQL session
advisory lock held on a dedicated connection, so any number of replicas can run one and
order per key is kept (two relays racing would interleave). If the leader dies, its
connection closes, the lock is released and another replica takes over.

What is relayed comes from an `OutboxSource`: by default `OutboxTable` (rows that
carry their topic, key and payload). A service whose records are cheaper to derive
after the commit than before it (the listener's `adt.events`, see
`adt_listener.events`) passes a source of its own and its own ``lock_key``; the
ordering, leadership, backoff and settle-after-ack rules stay the ones here.

With a `services.replay.Retention`, a published row is not forgotten but moved to the
source's journal until every consumer group has read it, and the leader watches the
broker for a loss, after which it publishes the kept rows again (`services.replay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services import lifecycle, metrics
from services.bus import BusUnavailable, Publisher, Record
from services.db import driver_connection
from services.replay import Kept, ReplayKeeper, Retention

log = logging.getLogger(__name__)

# The notification the ``outbox`` table's trigger sends at each commit that added rows, the
# payload being their service (migration 0012).
OUTBOX_CHANNEL = "wpc_outbox"
_LOCK_NAMESPACE = 0x57504302  # "WPC" + 2: the relay's advisory lock key (class id)
_BACKLOG_COUNT_INTERVAL_S = 5.0

# The statement every writer uses (SQLAlchemy parameters; `Outbox.row` gives them).
INSERT = ("INSERT INTO outbox (service, topic, key, payload, event_id) "
          "VALUES (:service, :topic, :key, :payload, :event_id)")

# A service's relay reads its rows of its topics (`*_MINE`); without a service (tests of the
# relay alone) every row.
_SELECT = "SELECT id, topic, key, payload, event_id FROM outbox ORDER BY id LIMIT $1"
_SELECT_MINE = ("SELECT id, topic, key, payload, event_id FROM outbox "
                "WHERE service = $2 AND topic = ANY($3::text[]) ORDER BY id LIMIT $1")
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
# Forget the published rows, keeping (with where the broker put them) those some consumer
# group reads: one statement, as the plain delete was.
_SETTLE = """
WITH gone AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]) RETURNING id, service, topic, key, payload, event_id)
INSERT INTO outbox_sent (id, service, topic, key, payload, event_id, partition, "offset")
SELECT g.id, g.service, g.topic, g.key, g.payload, g.event_id, k.p, k.o
FROM gone g JOIN unnest($2::bigint[], $3::int[], $4::bigint[]) AS k(i, p, o) ON k.i = g.id
"""
_SENT = "SELECT id, topic, key, payload, event_id FROM outbox_sent WHERE id > $1 ORDER BY id LIMIT $2"
_SENT_MINE = ("SELECT id, topic, key, payload, event_id FROM outbox_sent "
              "WHERE id > $1 AND service = $3 AND topic = ANY($4::text[]) ORDER BY id LIMIT $2")
_COUNT = "SELECT count(*) FROM outbox"
_COUNT_MINE = "SELECT count(*) FROM outbox WHERE service = $1 AND topic = ANY($2::text[])"
# Rows from before the service column: the relay of the service whose topics they name adopts them.
_ADOPT = "UPDATE {table} SET service = $1 WHERE service IS NULL AND topic = ANY($2::text[])"
_FOREIGN = "SELECT count(*) FROM outbox WHERE service = $1 AND NOT (topic = ANY($2::text[]))"


class ForeignTopic(ValueError):
    """A service tried to write a record of a topic it does not own: our fault (a wiring
    mistake), raised before anything is written."""


@dataclass(frozen=True)
class Outbox:
    """One service's side of the outbox: its name, which its rows carry, and its topics,
    the only ones it may write (and its relay publish)."""

    service: str
    topics: frozenset[str]

    @classmethod
    def of(cls, service: str, topics: Iterable[str]) -> Outbox:
        return cls(service, frozenset(topics))

    def check(self, topic: str) -> str:
        """``topic``, if this service owns it; else `ForeignTopic`."""
        if topic not in self.topics:
            raise ForeignTopic(f"the {self.service} service may not publish to {topic!r} "
                               f"(its topics: {', '.join(sorted(self.topics))})")
        return topic

    def row(self, topic: str, key: str | None, payload: bytes, event_id: object) -> Mapping[str, object]:
        """The parameters of `INSERT` for one record, its topic checked."""
        return {"service": self.service, "topic": self.check(topic), "key": key, "payload": payload,
                "event_id": event_id}

    def source(self) -> OutboxTable:
        """What this service's relay reads."""
        return OutboxTable(self)


class OutboxSource(Protocol):
    """Where a relay reads its records, in order, and how it forgets (or keeps) them once
    published.

    Each method gets the leader's asyncpg connection; each statement is its own
    transaction (no snapshot is held while the broker takes its time).
    """

    journal: str  # the table published rows are kept in (services.replay)
    journal_scope: str | None  # the service whose rows of that table are this source's (None: all)

    async def start(self, driver: Any) -> None:
        """A new leader, before its first batch."""

    async def fetch(self, driver: Any, limit: int) -> tuple[list[int], list[tuple[int, Record]]]:
        """Up to ``limit`` rows in publishing order: (their ids, (id, record) to publish).

        A row may yield no record: it is settled with the others, and not kept."""

    async def settle(self, driver: Any, ids: Sequence[int], kept: Sequence[Kept]) -> None:
        """The rows ``ids`` were published: forget them, but keep ``kept`` in the journal."""

    async def count(self, driver: Any) -> int:
        """Rows waiting (for the backlog gauge; may scan)."""

    async def replayable(self, driver: Any, after_id: int, limit: int) -> list[tuple[int, Record]]:
        """Kept rows above ``after_id``, in id order, as the records to publish again."""


def _record(topic: str, key: str | None, payload: bytes, event_id: object) -> Record:
    return Record(
        topic=topic,
        key=key.encode() if key is not None else None,
        value=bytes(payload),
        headers=(("event_id", str(event_id).encode()),),
    )


async def settle_rows(driver: Any, delete: str, move: str, ids: Sequence[int], kept: Sequence[Kept]) -> None:
    """``delete`` the published rows, or ``move`` them (same first parameter; then the kept
    ids, partitions, offsets) when some are kept."""
    if kept:
        await driver.execute(move, list(ids), [k.id for k in kept], [k.partition for k in kept],
                             [k.offset for k in kept])
    else:
        await driver.execute(delete, list(ids))


class OutboxTable:
    """The ``outbox`` table: every row carries its topic, key, payload and event id; with an
    `Outbox`, the rows of that service and its topics only (and its part of ``outbox_sent``)."""

    journal = "outbox_sent"

    def __init__(self, owner: Outbox | None = None) -> None:
        self.owner = owner
        self.journal_scope = owner.service if owner is not None else None
        # The trailing parameters of the three reads: the service and its topics, or none.
        self._mine: tuple[object, ...] = (owner.service, sorted(owner.topics)) if owner is not None else ()
        self._select, self._count, self._sent = (
            (_SELECT_MINE, _COUNT_MINE, _SENT_MINE) if owner is not None else (_SELECT, _COUNT, _SENT)
        )

    async def start(self, driver: Any) -> None:
        owner = self.owner
        if owner is None:
            return
        topics = sorted(owner.topics)
        for table in ("outbox", "outbox_sent"):
            await driver.execute(_ADOPT.format(table=table), owner.service, topics)
        foreign = int(await driver.fetchval(_FOREIGN, owner.service, topics))
        if foreign:
            # Written by hand, or under a topic name since changed: not published, said once.
            log.error("outbox: %d rows of the %s service name topics it does not publish; left unpublished",
                      foreign, owner.service)

    async def fetch(self, driver: Any, limit: int) -> tuple[list[int], list[tuple[int, Record]]]:
        rows = await driver.fetch(self._select, limit, *self._mine)
        return [r[0] for r in rows], [(r[0], _record(r[1], r[2], r[3], r[4])) for r in rows]

    async def settle(self, driver: Any, ids: Sequence[int], kept: Sequence[Kept]) -> None:
        await settle_rows(driver, _DELETE, _SETTLE, ids, kept)

    async def count(self, driver: Any) -> int:
        return int(await driver.fetchval(self._count, *self._mine))

    async def replayable(self, driver: Any, after_id: int, limit: int) -> list[tuple[int, Record]]:
        rows = await driver.fetch(self._sent, after_id, limit, *self._mine)
        return [(r[0], _record(r[1], r[2], r[3], r[4])) for r in rows]


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        publisher: Publisher,
        *,
        owner: Outbox | None = None,
        lock_key: int = 1,
        batch: int = 500,
        poll_interval_s: float = 0.2,
        max_backoff_s: float = 5.0,
        standby_interval_s: float = 1.0,
        linger_s: float = 0.02,
        source: OutboxSource | None = None,
        backlog_gauge: _Gauge | None = None,
        leader_gauge: _Gauge | None = None,
        retention: Retention | None = None,
        listen: tuple[str, str | None] | None = None,
    ) -> None:
        """``owner``: the service whose rows it publishes (and only its topics: checked again on
        every record before it goes out); without one, every row of ``outbox`` (tests of the
        relay alone). ``source``: another table than ``outbox`` (the listener's events).
        ``listen``: the PostgreSQL notification (channel, payload; None: any) that tells the
        leader rows were committed (migration 0012); by default the ``outbox`` table's, for
        the owner's rows (`OUTBOX_CHANNEL`)."""
        self._engine = engine
        self._owner = owner
        self._source: OutboxSource = source or OutboxTable(owner)
        # Without a retention (tools, tests of the relay alone), published rows are forgotten.
        self._keeper = ReplayKeeper(retention, self._source, publisher) if retention is not None else None
        # A process may run two relays (two sources, two lock keys): each reports its own.
        self._backlog_gauge: _Gauge = backlog_gauge or metrics.OUTBOX_BACKLOG
        self._leader_gauge: _Gauge = leader_gauge or metrics.RELAY_LEADER
        self._publisher = publisher
        self._lock_key = lock_key
        self._batch = batch
        self._poll = poll_interval_s
        self._max_backoff = max_backoff_s
        self._standby = standby_interval_s
        self._linger = linger_s
        self._wake = asyncio.Event()
        if listen is None and source is None:
            listen = (OUTBOX_CHANNEL, owner.service if owner is not None else None)
        self._listen = listen
        self._counted_at = 0.0
        self.is_leader = False

    def wake(self) -> None:
        """Called after a commit that added rows, so publishing does not wait for the next poll
        (when rows came shortly before too, for ``linger_s``, which gathers the rows of the
        commits that follow)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Lead while holding the lock, else stand by and try again; database trouble (the
        lock's connection lost) is retried after a backoff, never the end of the relay."""

        async def round_() -> float:
            async with self._engine.connect() as lock_conn:
                if await self._try_lead(lock_conn):
                    try:
                        await self._lead(lock_conn, stop)
                    finally:
                        # The session lock would outlive us on a pooled connection: release it.
                        self._set_leader(False)
                        await self._unlock(lock_conn)
            return self._standby

        backoff = lifecycle.Backoff(self._poll, self._max_backoff)
        await lifecycle.repeat(stop, round_, what="outbox relay", backoff=backoff)

    async def _unlock(self, conn: AsyncConnection) -> None:
        try:
            await conn.execute(
                text("SELECT pg_advisory_unlock(:ns, :key)"), {"ns": _LOCK_NAMESPACE, "key": self._lock_key}
            )
            await conn.commit()
        except Exception:
            # A dead connection holds no lock; make sure the pool does not reuse it.
            await conn.invalidate()

    async def _try_lead(self, conn: AsyncConnection) -> bool:
        got = await conn.scalar(
            text("SELECT pg_try_advisory_lock(:ns, :key)"), {"ns": _LOCK_NAMESPACE, "key": self._lock_key}
        )
        await conn.commit()
        return bool(got)

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        self._leader_gauge.set(1 if leader else 0)

    async def _lead(self, lock_conn: AsyncConnection, stop: asyncio.Event) -> None:
        self._set_leader(True)
        log.info("outbox relay: leading")
        # The leader publishes over its lock connection: no pool checkout (and its
        # pre-ping round trip) per batch, and every poll doubles as the keep-alive that
        # tells us the lock is still held.
        driver = await driver_connection(lock_conn)
        channel = await self._start_listening(driver)
        try:
            await self._lead_on(driver, stop)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):  # a lost connection listens no more anyway
                    await driver.remove_listener(channel, self._notified)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A notification of a committed row (another process, another replica wrote it)."""
        assert self._listen is not None
        wanted = self._listen[1]
        if wanted is None or payload == wanted:
            self._wake.set()

    async def _start_listening(self, driver: Any) -> str | None:
        """LISTEN on the leader's connection, before its first read (a row committed after
        that read is then notified); the channel, or None. Without it (a pooler that forbids
        LISTEN) the relay still polls."""
        if self._listen is None:
            return None
        channel = self._listen[0]
        try:
            await driver.add_listener(channel, self._notified)
        except Exception as exc:
            log.warning("outbox relay: cannot LISTEN on %s (%s); relying on polling", channel, type(exc).__name__)
            return None
        return channel

    async def _lead_on(self, driver: Any, stop: asyncio.Event) -> None:
        await self._source.start(driver)
        keeper = self._keeper
        backoff = lifecycle.Backoff(self._poll, self._max_backoff, jitter=0.5)
        starting = True
        busy_until = 0.0  # while rows keep coming (a round published some lately), a wake lingers
        while not stop.is_set():
            self._wake.clear()  # before reading: a commit from now on wakes the next round
            try:
                if keeper is not None and starting:
                    # Before publishing anything new: what was kept may be lost (a new broker).
                    await keeper.start(driver)
                    starting = False
                elif keeper is not None and keeper.due():
                    await keeper.check(driver, stop)
                published = await self._publish(driver)
            except BusUnavailable as exc:
                metrics.RELAY_ERRORS.inc()
                if keeper is not None:
                    keeper.disturbed()
                wait = backoff.next()
                log.warning("outbox relay: broker unavailable (%s); retry in %.1fs", exc, wait)
                await lifecycle.pause(stop, wait)
                continue
            backoff.reset()
            if published:
                busy_until = time.monotonic() + self._linger
            if published < self._batch:
                await lifecycle.pause(stop, self._poll, self._wake)
                if self._wake.is_set() and self._linger > 0 and time.monotonic() < busy_until:
                    # Woken by a commit while rows keep coming: let the commits of the next few
                    # milliseconds join it. At a steady 1,000 messages/s the store commits a
                    # message or two at a time; one broker round and two statements per commit
                    # would cost the listener more CPU than taking the messages in. The first
                    # commit after a quiet spell goes out at once (an idle system's latency).
                    await lifecycle.pause(stop, self._linger)

    async def publish_once(self) -> int:
        """Publish one batch; return how many rows were published (and settled)."""
        async with self._engine.connect() as conn:
            return await self._publish(await driver_connection(conn))

    async def _publish(self, driver: Any) -> int:
        """One batch over an asyncpg connection, each statement in its own transaction:
        no snapshot is held open while the broker takes its time, and with one leader
        nobody else deletes rows between our read and our delete."""
        ids, pairs = await self._source.fetch(driver, self._batch)
        if not ids:
            self._backlog(0)
            return 0
        records = [record for _id, record in pairs]
        if self._owner is not None:
            try:
                for record in records:
                    self._owner.check(record.topic)
            except ForeignTopic as exc:  # a wiring mistake: said loudly, nothing published
                log.error("outbox relay: %s; nothing of the batch was published", exc)
                raise
        acks = await self._publisher.publish(records) if records else []
        kept = self._keeper.kept(pairs, acks) if self._keeper is not None else []
        await self._source.settle(driver, ids, kept)
        if len(ids) < self._batch:
            self._backlog(0)  # we read everything there was
        elif time.monotonic() - self._counted_at >= _BACKLOG_COUNT_INTERVAL_S:
            # A full batch: more is waiting. Counting scans the table, so the gauge is
            # refreshed now and then, not per batch.
            self._backlog(await self._source.count(driver))
        per_topic: dict[str, int] = {}
        for r in records:
            per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
        for topic, n in per_topic.items():
            metrics.OUTBOX_PUBLISHED.labels(topic=topic).inc(n)
        return len(ids)

    def _backlog(self, rows: int) -> None:
        self._counted_at = time.monotonic()
        self._backlog_gauge.set(rows)


async def stop_with_last_publish(
    stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]], relays: Sequence[OutboxRelay]
) -> None:
    """A service's shutdown of its background tasks: set ``stop``, wait for the tasks, then
    give each relay that was leading one last publish attempt (5 s), so rows committed
    during the drain do not wait for the next leader.

    Leadership is read before stopping: a stopped relay has released its lock. And the
    last attempt comes after the relay's round in hand: beside a running round it would
    read the same rows and publish them twice."""
    leading = [relay for relay in relays if relay.is_leader]
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for relay in leading:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.publish_once(), 5.0)
