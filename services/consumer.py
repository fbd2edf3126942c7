"""The Kafka consuming side: a consumer-group loop that commits offsets only after the
handler has committed its own work, so every record is handled at least once.

Handlers must be idempotent by event id (they record handled ids in the same
database transaction as their effects): Tansu has no transactional producer, and a
crash between the handler's commit and the offset commit redelivers the batch.

Two kinds of failure, told apart by `is_transient`:

- Transient trouble (the database or the broker unreachable, a connection lost, a
  timeout, SQLSTATE classes 08/53/57, a serialization failure or deadlock that kept
  coming back): the handler raises, the loop commits nothing, seeks back to the records
  not handled and reads them again after a backoff (doubling up to ``max_backoff_s``),
  as the same group member: a new consumer would have to wait for the group to
  rebalance. Broker trouble restarts the consumer itself. Nothing is lost and nothing
  is set aside: the records are not at fault.
- A record that fails on its own (anything else): the handler sets it aside
  (`services.parking`) after a few tries and goes on, so one record never holds up its
  partition. The loop never sees that failure.

The loop reports on itself for readiness (`ConsumerLoop.health`): restarting again and
again without a committed batch, or lagging behind the end of its partitions by more
than a bound, makes `/readyz` fail with a reason naming the consumer group.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.health import Verdict
from services.lifecycle import Backoff, pause, until_stopped

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord[bytes, bytes]]], Awaitable[None]]

LAG = Gauge("wpc_consumer_lag", "Records behind the end offsets of the assigned partitions", ["group", "topic"])
RESTARTS = Counter(
    "wpc_consumer_restarts_total", "Failed rounds: a batch to read again (handler) or a consumer restarted (broker)",
    ["group"],
)

# SQLSTATE classes of trouble that is not the record's (PostgreSQL appendix A): connection
# exception, insufficient resources, operator intervention (shutdown, statement timeout).
_TRANSIENT_CLASSES = frozenset({"08", "53", "57"})
# Conflicts with other transactions: retried where they happen, and if they keep coming the
# batch is read again. 55P03: a lock_timeout, another transaction's lock, not the record.
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03"})
_FIRST_BACKOFF_S = 0.2


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what SQLAlchemy wraps (``orig``) and what it was raised from, once each."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen or len(seen) >= 8:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (getattr(e, "orig", None), e.__cause__, e.__context__) if isinstance(c, BaseException)]


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, bare (asyncpg) or wrapped (SQLAlchemy), else None."""
    for e in _causes(exc):
        code = getattr(e, "sqlstate", None)
        if isinstance(code, str) and code:
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is trouble around the record (retry the batch later) rather than the
    record's own (set it aside). See the module docstring."""
    code = sqlstate(exc)
    if code is not None:
        return code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_STATES
    for e in _causes(exc):
        if isinstance(e, OSError | TimeoutError | KafkaError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if type(e) is asyncpg.InterfaceError:  # "connection is closed": the client's state, not the record
            return True
    return False


def code_trace(exc: BaseException) -> str:
    """Where ``exc`` came from: its class (and SQLSTATE) and the code locations of its
    traceback, then of its causes. Never the exception's message or arguments: those may
    quote the data being applied (PHI), code locations cannot."""
    parts = []
    for e in _causes(exc):
        if e is not exc and e.__traceback__ is None:
            continue  # a wrapped driver error without a traceback of its own adds nothing
        name = f"{type(e).__module__}.{type(e).__qualname__}"
        code = getattr(e, "sqlstate", None)
        head = f"{name} (sqlstate {code})" if isinstance(code, str) else name
        frames = traceback.extract_tb(e.__traceback__)
        lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames]
        parts.append("\n".join([head, *lines]))
    return "\nwhich came from\n".join(parts)


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
        max_lag: int = 10_000,
        max_restarts: int = 3,
        restart_window_s: float = 300.0,
        lag_interval_s: float = 5.0,
        fetch_max_wait_ms: int = 100,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._options = dict(client_options or {})  # how the service authenticates (its principal)
        self._topics = list(topics)
        self._group = group_id
        self._handler = handler
        self._max_records = max_records
        self._session_timeout_ms = session_timeout_ms
        self._max_lag = max_lag
        self._max_restarts = max_restarts
        self._restart_window = restart_window_s
        self._lag_interval = lag_interval_s
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._lag_at = -float("inf")
        self._backoff = Backoff(_FIRST_BACKOFF_S, max_backoff_s, jitter=0.5)
        # Monotonic times of the restarts since the last committed batch (or caught-up lag).
        self._restarts: collections.deque[float] = collections.deque(maxlen=max(16, max_restarts + 1))
        self._last_error = ""
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.running = False
        self.lag: int | None = None  # None until measured

    @property
    def group(self) -> str:
        return self._group

    def health(self) -> Verdict:
        """Ready unless restarting again and again or lagging past the bound; the reason names
        the group and the error class, never a record."""
        now = time.monotonic()
        recent = sum(1 for t in self._restarts if now - t <= self._restart_window)
        if recent > self._max_restarts:
            return Verdict(False, f"consumer {self._group}: {recent} restarts in {self._restart_window:.0f} s "
                                  f"without a committed batch (last error {self._last_error})")
        if self.lag is not None and self.lag > self._max_lag:
            return Verdict(False, f"consumer {self._group}: {self.lag} records behind (bound {self._max_lag})")
        return Verdict(True)

    def status(self) -> dict[str, object]:
        """What ops read (`services.backlog`): the group, its topics, how far behind it is
        (None until measured), whether it runs, and its readiness with the reason."""
        verdict = self.health()
        return {"group": self._group, "topics": list(self._topics), "lag": self.lag, "running": self.running,
                "ready": verdict.ok, "reason": verdict.reason or None}

    async def check(self) -> Verdict:
        """`health` as a readiness check (`services.health.ops_router`)."""
        return self.health()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._consume(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker trouble: start afresh, never die
                await self._failed(exc, stop, "restarting")

    async def _failed(self, exc: Exception, stop: asyncio.Event, what: str) -> None:
        """Count and log a failed round, then wait out the backoff (doubling, with jitter)."""
        RESTARTS.labels(self._group).inc()
        name = type(exc).__name__
        wait = self._backoff.next()
        if not self._restarts or name != self._last_error:
            # The first failure of a run (or a new kind): where it came from, in code locations.
            log.warning("consumer %s: %s; %s in %.1fs\n%s", self._group, name, what, wait, code_trace(exc))
        else:
            log.warning("consumer %s: %s again (%d failures without a committed batch); %s in %.1fs",
                        self._group, name, len(self._restarts) + 1, what, wait)
        self._restarts.append(time.monotonic())
        self._last_error = name
        await pause(stop, wait)

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
            # How long the broker may hold a fetch while no record comes. Kafka answers as soon as
            # one does; Tansu looks a few times during the wait, so aiokafka's default (500 ms)
            # delayed an idle system's records by ~115 ms at each of the two hops to a care team.
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            **self._options,
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
                if time.monotonic() - self._lag_at >= self._lag_interval:
                    await self._measure_lag(consumer, batch)
                pending = [(tp, records) for tp, records in batch.items() if records]
                if not pending:
                    continue
                # Every partition's records in one call (each partition's in offset order), and
                # one offset commit: a handler's transactions and the broker's round trips are
                # per fetch, not per partition of it.
                try:
                    await self._handler([r for _tp, records in pending for r in records])
                except Exception as exc:
                    # The handler's trouble (the database away): the batch is read again after
                    # the backoff by this same member, which keeps its partitions (a new consumer
                    # would wait for the group to rebalance); what it did apply is a no-op then.
                    for again, unhandled in pending:
                        if again in consumer.assignment():  # else revoked meanwhile: its new owner reads it
                            consumer.seek(again, unhandled[0].offset)
                    await self._failed(exc, stop, "reading the batch again")
                    continue
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in pending})
                self._restarts.clear()
                self._backoff.reset()
        finally:
            self.running = False
            try:
                await asyncio.wait_for(consumer.stop(), 5.0)
            except (KafkaError, OSError, TimeoutError):
                pass

    async def _measure_lag(
        self, consumer: AIOKafkaConsumer, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Records between what is handled and the end of each assigned partition, per topic.
        The records in hand count as not yet handled: a batch that keeps failing shows as lag."""
        self._lag_at = time.monotonic()
        assigned = list(consumer.assignment())
        if not assigned:
            return
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), 5.0)
            per_topic = dict.fromkeys(self._topics, 0)
            for tp in assigned:
                in_hand = batch.get(tp)
                position = in_hand[0].offset if in_hand else await asyncio.wait_for(consumer.position(tp), 5.0)
                # Both ends are lower bounds, the larger one is taken: the fetch's high watermark
                # lags by a fetch, and Tansu answers ListOffsets with the base offset of the last
                # record batch + 1, short by the other records of that batch.
                end = max(ends.get(tp) or 0, consumer.highwater(tp) or 0)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - position)
        except (KafkaError, OSError, TimeoutError) as exc:  # a measurement missed is not a failure
            log.info("consumer %s: lag not measured (%s)", self._group, type(exc).__name__)
            return
        for topic, lag in per_topic.items():
            LAG.labels(self._group, topic).set(lag)
        self.lag = sum(per_topic.values())
        if self.lag == 0:
            self._restarts.clear()  # caught up: whatever failed before holds nothing up
