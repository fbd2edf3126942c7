"""From `adt.events` records to the store: decode, one transaction per event, retries.

Records of one Kafka key (one hospital patient) are applied in offset order; records
of different keys are applied concurrently on ``lanes`` connections, a lane chosen by
the key, so per-patient order holds and one slow patient does not hold up the rest.

An event that does not decode as `AdtEventV1` is a contract breach by the producer:
it is kept in ``undecodable_event`` for inspection, counted, logged by offset (never by
content) and skipped, so one bad record cannot block the partition. A database error propagates: the consumer loop then
re-reads the batch, and `processed_event` makes the re-run a no-op for what was done.
Conflicts between concurrent transactions (deadlock, unique violation when two
instances create the same person at once) are retried here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import zlib
from collections.abc import Callable, Sequence

from aiokafka import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc import metrics
from enrollment_svc.store import Applied, EnrollmentStore
from schemas.adt_event import AdtEventV1

log = logging.getLogger(__name__)

_RETRIES = 5
# SQLSTATEs worth a retry: serialization failure, deadlock, unique violation (a racing insert).
_RETRYABLE = frozenset({"40001", "40P01", "23505"})


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    return code if isinstance(code, str) else None


class AdtEventHandler:
    def __init__(
        self,
        engine: AsyncEngine,
        store: EnrollmentStore,
        *,
        lanes: int = 8,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._store = store
        self._lanes = lanes
        self._clock = clock
        self._on_commit = on_commit

    async def __call__(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        lanes: dict[int, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            lane = zlib.crc32(record.key or b"") % self._lanes
            lanes.setdefault(lane, []).append(record)
        # Every lane finishes (or fails) before the batch is judged: no lane keeps writing after
        # the consumer has given up on the batch and is about to read it again.
        results = await asyncio.gather(*(self._run_lane(batch) for batch in lanes.values()), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            raise failure
        if self._on_commit is not None:
            self._on_commit()

    async def _run_lane(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            try:
                event = AdtEventV1.model_validate_json(record.value)
            except ValidationError:
                await self._keep_undecodable(record)
                continue
            await self.apply(event)

    async def _keep_undecodable(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Keep a record that breaks the contract (table ``undecodable_event``), then skip it."""
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    'INSERT INTO undecodable_event (topic, partition, "offset", value) VALUES (:t, :p, :o, :v) '
                    "ON CONFLICT ON CONSTRAINT undecodable_event_uq DO NOTHING"
                ),
                {"t": record.topic, "p": record.partition, "o": record.offset, "v": record.value or b""},
            )
        metrics.EVENTS.labels(outcome="undecodable").inc()
        log.error("adt.events record at %s/%d offset %d does not decode; kept in undecodable_event, skipped",
                  record.topic, record.partition, record.offset)

    async def apply(self, event: AdtEventV1) -> Applied:
        """Apply one event in its own transaction, retrying conflicts with other transactions."""
        started = time.perf_counter()
        for attempt in range(1, _RETRIES + 1):
            try:
                async with self._engine.begin() as conn:
                    applied = await self._store.apply_adt_event(conn, event, self._clock())
                break
            except (IntegrityError, DBAPIError) as exc:
                if _sqlstate(exc) not in _RETRYABLE or attempt == _RETRIES:
                    raise
                await asyncio.sleep(0.01 * attempt)
        metrics.record(applied, time.perf_counter() - started)
        if applied.candidate_id is not None:
            log.info("candidate %s (%s, %s) for person %s from event %s", applied.candidate_id,
                     applied.evaluation.proposed if applied.evaluation else "", applied.candidate_status,
                     applied.person_id, event.event_id)
        return applied
