"""`adt.events` records, derived from stored messages after the ACK, and their relay source.

Why after: building the event (every field normalized, validated against
`AdtEventV1`, serialized) costs about two thirds of deciding a message, and none of
it is needed to answer the sender. The AA means "the raw message is committed", so
the listener commits the raw message with a reference row in ``adt_event_queue`` (one
statement, `adt_listener.store`) and answers; the event is derived here, later.

What stays the same for consumers: the event of a message is a function of what is
stored — the raw bytes, the row id (``message_id``), the receive time (the row's
``received_at``, the same instant the ACK path used) and the intake policy — so it is
byte for byte the event `intake(..., with_event=True)` builds, whenever and however
often it is derived, and ``event_id`` (MSH-4 + MSH-10 + content digest) still lets
consumers dedupe a re-publication. Order per patient key: the queue is written by the group commit in
arrival order and published in id order, by one leader (`services.outbox.OutboxRelay`
under a lock key of its own).

Where the CPU goes: derivation runs in one worker process, started with *spawn* and
niced like the conformance worker, so that under a burst the processes taking messages
into custody (listener, PostgreSQL) come first and the queue drains mostly when they
idle. Not SCHED_IDLE: on a host whose other work keeps both CPUs busy, that starved the
worker outright (the bench left thousands of events unpublished), while a nice level
still guarantees it a share;
the relay loop in the listener only reads rows, ships bytes to the worker and
publishes. A backlog is visible as ``wpc_adt_event_queue_backlog``.

A message whose event cannot be derived is "our fault" (the same code accepted it): it
is logged by id and counted, its queue row is dropped so that the patients behind it are
not held up, and the raw message stays in ``adt_message``; after the fix, re-inserting
its id into ``adt_event_queue`` publishes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import os
import signal
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter

from adt_listener.digest import content_digest
from adt_listener.er7 import Message
from adt_listener.intake import IntakePolicy
from adt_listener.normalize import normalize
from schemas.adt_event import AdtEventV1
from services import lifecycle
from services.bus import Record
from services.reaper import die_with_parent
from services.replay import Kept

log = logging.getLogger(__name__)

__all__ = ["EVENT_BACKLOG", "EVENT_QUEUE_CHANNEL", "EVENT_RELAY_LEADER", "DerivedEvents", "derive_batch",
           "derive_event"]

EVENT_BACKLOG = Gauge("wpc_adt_event_queue_backlog", "Accepted messages whose adt.events record is not yet published")
EVENT_RELAY_LEADER = Gauge("wpc_adt_event_relay_leader", "1 while this process leads the adt.events relay")
UNDERIVABLE = Counter("wpc_adt_events_underivable_total", "Accepted messages whose event could not be derived")

# Serializes straight to bytes (model_dump_json gives str, which we would encode again).
_EVENT_JSON: TypeAdapter[AdtEventV1] = TypeAdapter(AdtEventV1)

# The notification of a commit that queued events (the queue's trigger, migration 0012): it
# wakes the relay's leader, which may be another replica than the one that took the message.
EVENT_QUEUE_CHANNEL = "wpc_adt_event_queue"

_WORKER_NICE = 10  # as the conformance worker: custody first, a bounded share for derivation
DERIVATION_PROCESS = "wpc-derive"  # the worker's process name (ps, top)

_SELECT = """
SELECT q.id, m.id AS message_id, m.raw, m.received_at, m.event_id, m.patient_key
FROM adt_event_queue q JOIN adt_message m ON m.id = q.message_id
ORDER BY q.id LIMIT $1
"""
# Only rows whose message is missing: a plain "rest of the queue" would also take a valid row
# committed between the two reads (read committed) and drop its event.
_ORPHANS = """
SELECT q.id FROM adt_event_queue q
WHERE NOT EXISTS (SELECT 1 FROM adt_message m WHERE m.id = q.message_id)
ORDER BY q.id LIMIT $1
"""
_DELETE = "DELETE FROM adt_event_queue WHERE id = ANY($1::bigint[])"
# Published rows some consumer group reads are kept (services.replay), as a reference: the
# event is derived again, byte for byte, if the broker loses it.
_SETTLE = """
WITH gone AS (DELETE FROM adt_event_queue WHERE id = ANY($1::bigint[]) RETURNING id, message_id)
INSERT INTO adt_event_sent (id, message_id, topic, partition, "offset")
SELECT g.id, g.message_id, $5, k.p, k.o
FROM gone g JOIN unnest($2::bigint[], $3::int[], $4::bigint[]) AS k(i, p, o) ON k.i = g.id
"""
_SENT = """
SELECT s.id, m.id AS message_id, m.raw, m.received_at, m.event_id, m.patient_key
FROM adt_event_sent s JOIN adt_message m ON m.id = s.message_id
WHERE s.id > $1 ORDER BY s.id LIMIT $2
"""
_COUNT = "SELECT count(*) FROM adt_event_queue"


def derive_event(raw: bytes, *, message_id: uuid.UUID, received_at: dt.datetime, policy: IntakePolicy) -> bytes:
    """The `AdtEventV1` JSON of a stored, accepted message. Raises if it has none."""
    event, _warnings = normalize(
        Message.parse(raw), message_id=message_id, received_at=received_at, policy=policy,
        content_digest=content_digest(raw),
    )
    return _EVENT_JSON.dump_json(event)


def derive_batch(
    items: Sequence[tuple[uuid.UUID, bytes, dt.datetime]], policy: IntakePolicy
) -> list[bytes | None]:
    """`derive_event` for each (message id, raw, received_at); None where it failed.

    Pure and picklable both ways: this is what runs in the worker process.
    """
    out: list[bytes | None] = []
    for message_id, raw, received_at in items:
        try:
            out.append(derive_event(raw, message_id=message_id, received_at=received_at, policy=policy))
        except Exception:  # a defect for this one message; the others must not wait for the fix
            out.append(None)
    return out


def _worker_init(listener_pid: int) -> None:
    """The deriving process: low priority, deaf to Ctrl-C (the listener drains on it, then
    shuts the pool down), and gone when the listener is (`services.reaper.die_with_parent`):
    a listener killed without its drain (SIGKILL, out of memory) cannot shut the pool
    down, and the worker would idle on forever."""
    os.nice(_WORKER_NICE)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(listener_pid, DERIVATION_PROCESS)
    lifecycle.collect_less_often()  # a batch's events are all alive until it returns


class DerivedEvents:
    """`services.outbox.OutboxSource` of ``adt_event_queue``: derive, then publish to ``topic``;
    published rows are kept in ``adt_event_sent`` while consumers may need them again.

    ``in_process=True`` derives in the calling process (tests, tools); otherwise in
    a worker process started on first use. `close` stops the worker.
    """

    journal = "adt_event_sent"
    journal_scope: str | None = None  # the listener's tables alone: no service column to scope by

    def __init__(self, topic: str, policy: IntakePolicy, *, in_process: bool = False) -> None:
        self._topic = topic
        self._policy = policy
        self._in_process = in_process
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: a fork of the listener would copy its event loop, sockets
            # and connections into the child.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def _derive(self, items: list[tuple[uuid.UUID, bytes, dt.datetime]]) -> list[bytes | None]:
        if self._in_process:
            return derive_batch(items, self._policy)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), derive_batch, items, self._policy)
        except BrokenProcessPool:
            # The worker died (killed, out of memory): start a new one next round; the
            # rows are still queued, nothing was published or deleted.
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            raise

    async def fetch(self, driver: Any, limit: int) -> tuple[list[int], list[tuple[int, Record]]]:
        rows = await driver.fetch(_SELECT, limit)
        if not rows:
            # A queue row without its message cannot come from the store (one statement
            # writes both); drop such rows rather than let them stop the queue.
            orphans = await driver.fetch(_ORPHANS, limit)
            if orphans:
                log.error("adt.events relay: %d queue rows without a message, dropped", len(orphans))
            return [r[0] for r in orphans], []
        return [r[0] for r in rows], await self._records(rows)

    async def _records(self, rows: Sequence[Any]) -> list[tuple[int, Record]]:
        """(row id, record) of each row whose event derives; the others are logged and counted."""
        payloads = await self._derive([(r[1], bytes(r[2]), r[3]) for r in rows])
        records: list[tuple[int, Record]] = []
        for row, payload in zip(rows, payloads, strict=True):
            if payload is None:
                UNDERIVABLE.inc()
                log.error("adt.events relay: no event for message %s (kept in adt_message)", row[1])
                continue
            key = row[5]
            records.append((row[0], Record(
                topic=self._topic,
                key=key.encode() if key is not None else None,
                value=payload,
                headers=(("event_id", str(row[4]).encode()),),
            )))
        return records

    async def settle(self, driver: Any, ids: Sequence[int], kept: Sequence[Kept]) -> None:
        if kept:
            await driver.execute(_SETTLE, list(ids), [k.id for k in kept], [k.partition for k in kept],
                                 [k.offset for k in kept], self._topic)
        else:
            await driver.execute(_DELETE, list(ids))

    async def replayable(self, driver: Any, after_id: int, limit: int) -> list[tuple[int, Record]]:
        rows = await driver.fetch(_SENT, after_id, limit)
        if not rows:
            return []
        records = await self._records(rows)
        if len(records) < len(rows):
            # Not derivable now: nothing to publish again for them; past them, not stuck on them.
            derived = {row_id for row_id, _ in records}
            gone = [r[0] for r in rows if r[0] not in derived]
            await driver.execute("DELETE FROM adt_event_sent WHERE id = ANY($1::bigint[])", gone)
        return records

    async def start(self, driver: Any) -> None:
        """Nothing to prepare: ``adt_event_queue`` holds the listener's rows only."""

    async def count(self, driver: Any) -> int:
        return int(await driver.fetchval(_COUNT))

    def close(self) -> None:
        """Stop the worker process (waits for a batch in hand: without the wait the
        listener may exit first, and the worker would outlive it)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """`close` off the event loop (the drain's deadline and a second Ctrl-C run on it)."""
        await asyncio.to_thread(self.close)
