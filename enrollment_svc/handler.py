"""From `adt.events` records to the store: decode, group commit per lane, retries.

Records of one Kafka key (one hospital patient) are applied in offset order; records
of different keys are applied concurrently on ``lanes`` connections, a lane chosen by
the key, so per-patient order holds and one slow patient does not hold up the rest.

A lane holds one pooled connection and speaks to it through the asyncpg driver
(`enrollment_svc.sql`), managing its transactions itself: the store's statements are
short, and SQLAlchemy's per-statement work cost more than the statements did.

Group commit: a lane applies its records in order in one transaction (at most
``group_max`` at a time), so a burst costs one BEGIN/COMMIT and one connection checkout
instead of one per record (a group also ends at a record that made a candidate: see
`Lane._group`). Each record is still applied exactly as alone: its dedupe
row, history, decision and outbox rows are written in that transaction, and later
records of the group see them. If anything in a group fails, the transaction rolls back
as a whole (nothing of the group is kept) and the lane applies the same records again
one by one, each in its own transaction with the usual retries, so a record that fails
alone fails as it would have alone, and the others' effects are neither lost nor
duplicated.

A batch of at least ``bulk_min`` events goes another way first (`AdtEventHandler._in_bulk`,
`enrollment_svc.bulk`): what of it can be is applied as sets (history, and each patient's
current events in order, decided there), the rest through the lanes. The first set commits
on its own, before the rounds of patients with several events (its candidates are then
published at once); a failed set leaves its events to the lanes (the whole batch when it is
the first), so a poison record is parked alone as below.

An event that does not decode as `AdtEventV1` is a contract breach by the producer:
it is kept in ``undecodable_event`` for inspection, counted, logged by offset (never by
content) and skipped, so one bad record cannot block the partition.

Failures while applying an event (`services.consumer.is_transient` tells them apart):
conflicts between concurrent transactions (deadlock, unique violation when two
instances create the same person at once) are retried here; transient trouble (the
database away) propagates, the consumer loop re-reads the batch, and `processed_event`
makes the re-run a no-op for what was done; an event that fails on its own is parked
(`services.parking`: kept, dead-lettered, logged by class and code locations) and its
lane goes on, so the others of its group are applied once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc import bulk, metrics
from enrollment_svc.sql import Sql, driver_connection
from enrollment_svc.store import Applied, EnrollmentStore
from schemas.adt_event import AdtEventV1
from services.consumer import is_transient, keep_undecodable, sqlstate
from services.parking import Parking, RecordRef

log = logging.getLogger(__name__)

_RETRIES = 5
# SQLSTATEs worth a retry: serialization failure, deadlock, unique violation (a racing insert).
_RETRYABLE = frozenset({"40001", "40P01", "23505"})


# PostgreSQL re-plans a prepared statement on every execution for as long as it judges custom
# plans cheaper than the generic one (it does for statements with ANY($n), LIMIT or CTEs, as the
# store's are), and planning then costs more CPU than executing. Every statement of the ADT path
# reads by key or by index whatever its parameters (their generic plans were checked with EXPLAIN),
# so one generic plan per statement and connection is what they need. SET LOCAL: the pooled
# connection goes back to the pool without it.
_BEGIN = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan"


def lane_of(key: bytes | None, lanes: int) -> int:
    """The lane of a Kafka key: every record of one key goes through one lane, in order."""
    return zlib.crc32(key or b"") % lanes


class Lane:
    """One pooled connection applying one lane's events, in order, group-committed."""

    def __init__(self, handler: AdtEventHandler, driver: Any) -> None:
        self._handler = handler
        self._driver = driver
        self._sql = Sql(driver)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        await self._driver.execute(_BEGIN)  # one round trip: BEGIN and the transaction's settings
        try:
            yield
        except BaseException:
            # A broken connection cannot roll back: `AdtEventHandler.lane` then discards it.
            with contextlib.suppress(Exception):
                await self._driver.execute("ROLLBACK")
            raise
        await self._driver.execute("COMMIT")

    async def apply(self, events: Sequence[AdtEventV1], sources: Sequence[RecordRef] | None = None) -> list[Applied]:
        """Apply ``events`` in order. With ``sources`` (the records they came from) and the
        handler's parking, an event that fails on its own is parked (``Applied.parked``)
        instead of failing the call."""
        items = list(zip(events, sources, strict=True)) if sources is not None else [(e, None) for e in events]
        step = self._handler.group_max
        applied: list[Applied] = []
        for i in range(0, len(items), step):
            applied += await self._group(items[i : i + step])
        return applied

    async def _group(self, items: Sequence[tuple[AdtEventV1, RecordRef | None]]) -> list[Applied]:
        if len(items) == 1:
            return [await self._one(*items[0])]
        store, clock = self._handler.store, self._handler.clock
        applied: list[Applied] = []
        while len(applied) < len(items):
            rest = items[len(applied) :]
            done: list[Applied] = []
            started = time.perf_counter()
            try:
                async with self._transaction():
                    for event, _ in rest:
                        done.append(await store.apply_adt_event(self._sql, event, clock()))
                        if done[-1].candidate_id is not None:
                            # Commit now: a new candidate holds its program's capacity row until
                            # commit, and every instance's next candidate for the program waits on it.
                            break
            except Exception as exc:  # rolled back as a whole: redo the rest one event per transaction
                log.info("group of %d events failed (%s, sqlstate %s); applying them one by one",
                         len(rest), type(exc).__name__, sqlstate(exc))
                return applied + [await self._one(event, source) for event, source in rest]
            seconds = time.perf_counter() - started
            for (event, _), one in zip(rest, done, strict=False):
                _committed(event, one, seconds)
            applied += done
        return applied

    async def apply_bulk(
        self, items: Sequence[bulk.Item], now: dt.datetime,
        committed: Callable[[bulk.BulkResult], None] = lambda first: None,
    ) -> bulk.BulkResult:
        """Apply what of a batch can be as sets (`enrollment_svc.bulk`): the first set in one
        transaction and the rounds after it in another (`bulk.apply_batch`'s ``checkpoint``);
        ``committed`` is told the first set's result once it is committed."""

        async def checkpoint(first: bulk.BulkResult) -> None:
            await self._driver.execute(f"COMMIT; {_BEGIN}")  # one round trip, same settings
            committed(first)

        async with self._transaction():
            return await bulk.apply_batch(self._sql, self._handler.store, items, now,
                                          round_min=self._handler.bulk_min, checkpoint=checkpoint)

    async def _one(self, event: AdtEventV1, source: RecordRef | None = None) -> Applied:
        """Apply one event in its own transaction; park it when it keeps failing on its own."""
        parking = self._handler.parking
        if source is None or parking is None:
            return await self._alone(event)
        applied = await parking.attempt(source, lambda: self._alone(event), event_id=event.event_id)
        if applied is None:
            metrics.EVENTS.labels(outcome="parked").inc()
            return Applied(parked=True)
        return applied

    async def _alone(self, event: AdtEventV1) -> Applied:
        """Apply one event in its own transaction, retrying conflicts with other transactions."""
        started = time.perf_counter()
        for attempt in range(1, _RETRIES + 1):
            try:
                async with self._transaction():
                    applied = await self._handler.store.apply_adt_event(self._sql, event, self._handler.clock())
                break
            except Exception as exc:
                if sqlstate(exc) not in _RETRYABLE or attempt == _RETRIES:
                    raise
                await asyncio.sleep(0.01 * attempt)
        _committed(event, applied, time.perf_counter() - started)
        return applied


def _committed(event: AdtEventV1, applied: Applied, seconds: float) -> None:
    metrics.record(applied, seconds)
    if applied.candidate_id is not None:
        log.info("candidate %s (%s, %s) for person %s from event %s", applied.candidate_id,
                 applied.evaluation.proposed if applied.evaluation else "", applied.candidate_status,
                 applied.person_id, event.event_id)


class AdtEventHandler:
    def __init__(
        self,
        engine: AsyncEngine,
        store: EnrollmentStore,
        *,
        lanes: int = 8,
        group_max: int = 64,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_commit: Callable[[], None] | None = None,
        parking: Parking | None = None,
        bulk_min: int = 8,
    ) -> None:
        self._engine = engine
        self.bulk_min = bulk_min  # a batch (and a round of it) of at least this many events goes as sets; 0: never
        self.parking = parking  # None: an event that fails raises (benchmarks, tests of the lanes)
        self.store = store
        self.lanes = lanes
        self.group_max = group_max
        self.clock = clock
        self._on_commit = on_commit

    async def __call__(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        decoded: dict[int, AdtEventV1] = {}
        records = await self._in_bulk(records, decoded)
        lanes: dict[int, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            lanes.setdefault(lane_of(record.key, self.lanes), []).append(record)
        # Every lane finishes (or fails) before the batch is judged: no lane keeps writing after
        # the consumer has given up on the batch and is about to read it again.
        results = await asyncio.gather(*(self._run_lane(batch, decoded) for batch in lanes.values()),
                                       return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if self._on_commit is not None:
            self._on_commit()

    async def _in_bulk(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], decoded: dict[int, AdtEventV1]
    ) -> Sequence[ConsumerRecord[bytes, bytes]]:
        """Apply what of a batch can be as sets (`enrollment_svc.bulk`), decoding
        each record once (into ``decoded``, by the record's id); return the records left for
        the lanes. Any failure of the set leaves them all to the lanes, one event at a time:
        they park a poison record and apply the others once."""
        if self.bulk_min <= 0 or len(records) < self.bulk_min:
            return records
        now = self.clock()
        sources: list[ConsumerRecord[bytes, bytes]] = []
        for record in records:
            try:
                decoded[id(record)] = AdtEventV1.model_validate_json(record.value)
            except ValidationError:
                continue  # the lane keeps it as undecodable
            sources.append(record)
        rules = self.store.rules
        items = [bulk.item_of(decoded[id(r)], rules) for r in sources]
        started = time.perf_counter()
        first: list[bulk.BulkResult] = []  # the first set's result, once committed
        try:
            async with self.lane() as lane:
                result = await lane.apply_bulk(items, now, first.append)
        except Exception as exc:
            if is_transient(exc) and sqlstate(exc) not in _RETRYABLE:
                raise  # the database away: the consumer reads the batch again later
            if not first:
                log.info("bulk of %d events not applied (%s, sqlstate %s); applying them one by one",
                         len(items), type(exc).__name__, sqlstate(exc))
                return records
            # The first set was committed: the rounds' events go one at a time.
            result = first[0]
            log.info("bulk rounds of %d events not applied (%s, sqlstate %s); applying them one by one",
                     len(items) - len(result.handled), type(exc).__name__, sqlstate(exc))
        seconds = time.perf_counter() - started
        # Each record of the set was committed (or found a duplicate) with it: the set's time is
        # each one's apply time, as a group's is for each of its records (`metrics.record`).
        metrics.EVENTS.labels(outcome="applied").inc(result.applied - len(result.decided))
        metrics.EVENTS.labels(outcome="duplicate").inc(result.duplicates)
        for _ in range(result.applied + result.duplicates - len(result.decided)):
            metrics.APPLY_SECONDS.observe(seconds)
        for i, applied in result.decided.items():
            _committed(items[i].event, applied, seconds)
        handled = {id(sources[i]) for i in result.handled}
        log.debug("bulk: %d of %d events (%d duplicates, %d encounters, %d decided) in %.3f s", len(handled),
                  len(records), result.duplicates, result.encounters, len(result.decided), seconds)
        return [record for record in records if id(record) not in handled]

    async def _run_lane(self, records: list[ConsumerRecord[bytes, bytes]], decoded: Mapping[int, AdtEventV1]) -> None:
        events: list[AdtEventV1] = []
        sources: list[RecordRef] = []
        for record in records:
            try:
                events.append(decoded.get(id(record)) or AdtEventV1.model_validate_json(record.value))
            except ValidationError:
                await self._keep_undecodable(record)
                continue
            sources.append(RecordRef.of(record))
        if events:
            async with self.lane() as lane:
                await lane.apply(events, sources)

    async def reapply(self, record: RecordRef) -> None:
        """Apply a parked record again (`services.parking.Parking.redrive`); raises when it
        still fails. Idempotent by event id, as every application is."""
        event = AdtEventV1.model_validate_json(record.value)
        async with self.lane() as lane:
            await lane.apply([event])
        if self._on_commit is not None:
            self._on_commit()

    @contextlib.asynccontextmanager
    async def lane(self) -> AsyncIterator[Lane]:
        """A lane on one pooled connection, for as long as the caller has events for it."""
        async with self._engine.connect() as conn:
            driver = await driver_connection(conn)
            try:
                yield Lane(self, driver)
            finally:
                if driver.is_in_transaction():
                    # Cancelled mid-transaction: the pool must not hand this connection on.
                    await conn.invalidate()

    async def _keep_undecodable(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Keep a record that breaks the contract (table ``undecodable_event``), then skip it."""
        async with self._engine.begin() as conn:
            await keep_undecodable(conn, record.topic, record.partition, record.offset, record.value or b"")
        metrics.EVENTS.labels(outcome="undecodable").inc()
        log.error("adt.events record at %s/%d offset %d does not decode; kept in undecodable_event, skipped",
                  record.topic, record.partition, record.offset)

    async def apply(self, event: AdtEventV1) -> Applied:
        """Apply one event in its own transaction, retrying conflicts with other transactions."""
        async with self.lane() as lane:
            return (await lane.apply([event]))[0]
