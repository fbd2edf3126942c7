"""The Kafka consuming side: a consumer-group loop that commits offsets only after the
handler has committed its own work, so every record is handled at least once.

Handlers must be idempotent by event id (they record handled ids in the same
database transaction as their effects): Tansu has no transactional producer, and a
crash between the handler's commit and the offset commit redelivers the batch.

If the handler fails (database down) the loop drops its consumer without committing
and starts afresh after a backoff, so the same records come again; a broker outage
is handled the same way. Neither ever stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.lifecycle import until_stopped

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


async def keep_undecodable(conn: AsyncConnection, topic: str, partition: int, offset: int, value: bytes) -> None:
    """Keep a record that breaks its topic's contract (table ``undecodable_event``) so it can
    be inspected; the caller then skips it, so one bad record cannot block the partition.
    Unique on (topic, partition, offset): every consumer group of the topic keeps it once."""
    await conn.execute(
        text('INSERT INTO undecodable_event (topic, partition, "offset", value) VALUES (:t, :p, :o, :v) '
             "ON CONFLICT ON CONSTRAINT undecodable_event_uq DO NOTHING"),
        {"t": topic, "p": partition, "o": offset, "v": value},
    )


class ConsumerLoop:
    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str,
        handler: Handler,
        *,
        max_records: int = 500,
        max_backoff_s: float = 5.0,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = list(topics)
        self._group = group_id
        self._handler = handler
        self._max_records = max_records
        self._max_backoff = max_backoff_s
        self._session_timeout_ms = session_timeout_ms
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                await self._consume(stop)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or handler trouble: start afresh, never die
                log.warning("consumer %s: %s; restarting in %.1fs", self._group, type(exc).__name__, backoff)
                try:
                    await asyncio.wait_for(stop.wait(), backoff + random.uniform(0, backoff / 2))
                except TimeoutError:
                    pass
                backoff = min(self._max_backoff, backoff * 2)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(1000, self._session_timeout_ms // 4),
            metadata_max_age_ms=5_000,
        )
        try:
            # start() waits for a group assignment without bound (the broker gone mid-join:
            # for ever); a stop must not wait for it, and a half-started consumer is stopped.
            started, _ = await until_stopped(stop, consumer.start())
            if not started:
                return
            self.running = True
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self._max_records)
                self.assigned = frozenset(consumer.assignment())
                for tp, records in batch.items():
                    if not records:
                        continue
                    await self._handler(records)
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            self.running = False
            try:
                await asyncio.wait_for(consumer.stop(), 5.0)
            except (KafkaError, OSError, TimeoutError):
                pass
