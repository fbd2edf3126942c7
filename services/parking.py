"""Parking: a record a consumer cannot apply is set aside, not retried for ever.

A handler (enrollment service, notifier) applies each record through `Parking.attempt`:

- success: done;
- transient trouble (`services.consumer.is_transient`: database or broker away, ...):
  raised at once; the consumer loop reads the batch again later, nothing is parked;
- any other error: tried again, each try in its own transaction, up to ``attempts``
  times; then *parked*. One transaction keeps the record in ``parked_event`` (group,
  topic, partition, offset, key and value bytes, event id, error class, the traceback's
  code locations, attempts) and writes its dead letter (`schemas.parked_event`) to the
  service's outbox for the group's dead-letter topic; then the error class and code
  locations are logged (never the exception's text: it may quote the record), the
  metrics raised, and the handler goes on with the next record.

Re-driving (`Parking.redrive`, used by ``POST /v1/parked/{id}/redrive`` and
`wpc redrive`) applies a parked record again through the same handler, which is
idempotent by event id: success marks it ``redriven``; a failure keeps it parked with
the new error. Each re-drive is an ``audit`` row (who, which record).

Records that do not decode at all are not parked: they break their topic's contract
(the producer's fault), are shared by every group reading the topic, and stay in
``undecodable_event`` as before (`services.consumer.keep_undecodable`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from aiokafka import ConsumerRecord
from fastapi import APIRouter, Depends, HTTPException, Query
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.parked_event import ParkedEventV1
from services import audit
from services.auth import User, current_user
from services.consumer import code_trace, is_transient
from services.outbox import INSERT as OUTBOX_INSERT
from services.outbox import Outbox

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 3  # tries of one record, each in its own transaction, before it is parked
_DEADLETTER_NAMESPACE = uuid.UUID("6a1d2c5e-52a8-4d7e-9b8a-0f3c7e5d9a41")

PARKED = Counter("wpc_consumer_parked_total", "Records a consumer set aside (parked)", ["group", "topic"])
WAITING = Gauge("wpc_consumer_parked_waiting", "Parked records not yet re-driven", ["group", "topic"])
REDRIVES = Counter("wpc_consumer_redrives_total", "Re-drives of parked records, by outcome", ["group", "outcome"])


@dataclass(frozen=True)
class RecordRef:
    """A consumed record as parking keeps it: where it was read, and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> RecordRef:
        return cls(record.topic, record.partition, record.offset, record.key, record.value or b"")


# Applies one record through a service's handler, raising when it fails (no parking).
Reapply = Callable[[RecordRef], Awaitable[None]]


@dataclass(frozen=True)
class Redriven:
    id: int
    outcome: Literal["redriven", "parked"]
    error_class: str | None = None


_PARK = (
    'INSERT INTO parked_event (consumer_group, topic, partition, "offset", key, value, event_id, error_class, '
    "traceback, attempts) VALUES (:g, :t, :p, :o, :k, :v, :e, :c, :tb, :n) "
    "ON CONFLICT ON CONSTRAINT parked_event_uq DO UPDATE SET error_class = EXCLUDED.error_class, "
    "traceback = EXCLUDED.traceback, attempts = parked_event.attempts + EXCLUDED.attempts, "
    "last_failed_at = now(), status = 'parked', redriven_at = NULL, redriven_by = NULL "
    "RETURNING id, parked_at, (xmax = 0) AS inserted"
)
_COLUMNS = (
    'id, consumer_group, topic, partition, "offset", key, event_id, error_class, traceback, attempts, '
    "parked_at, last_failed_at, status, redriven_at, redriven_by"
)


def _uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value is not None else None
    except ValueError:
        return None


def _event_id_in(value: bytes) -> uuid.UUID | None:
    """The ``event_id`` of a JSON event, when the record gets that far (every topic here has one)."""
    try:
        body = json.loads(value)
    except ValueError:
        return None
    return _uuid(body.get("event_id")) if isinstance(body, dict) else None


class Parking:
    """Parking of one consumer group: its ``parked_event`` rows and its dead-letter topic."""

    def __init__(
        self,
        engine: AsyncEngine,
        group: str,
        deadletter_topic: str,
        *,
        outbox: Outbox,
        attempts: int = ATTEMPTS,
        retry_delay_s: float = 0.05,
        on_park: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self.group = group
        self.deadletter_topic = outbox.check(deadletter_topic)  # the consuming service's own topic
        self._outbox = outbox
        self._attempts = attempts
        self._delay = retry_delay_s
        self._on_park = on_park  # the relay's wake: the dead letter is in the outbox
        self._gauge_topics: set[str] = set()

    async def attempt(
        self, record: RecordRef, apply: Callable[[], Awaitable[T]], *, event_id: object = None
    ) -> T | None:
        """``apply()`` (one transaction of the caller's), tried up to ``attempts`` times; None
        when the record was parked. Transient trouble is raised at once (see the module)."""
        attempt = 1
        while True:
            try:
                return await apply()
            except Exception as exc:
                if is_transient(exc):
                    raise
                if attempt >= self._attempts:
                    await self.park(record, exc, attempts=attempt, event_id=event_id)
                    return None
                log.info("consumer %s: %s/%d offset %d failed (%s), try %d of %d", self.group, record.topic,
                         record.partition, record.offset, type(exc).__name__, attempt, self._attempts)
            await asyncio.sleep(self._delay * attempt)
            attempt += 1

    async def park(self, record: RecordRef, exc: BaseException, *, attempts: int, event_id: object = None) -> int:
        """Keep the record and publish its dead letter (one transaction); returns its id."""
        trace = code_trace(exc)
        source_event_id = _uuid(event_id) if event_id is not None else _event_id_in(record.value)
        async with self._engine.begin() as conn:
            row = (await conn.execute(text(_PARK), {
                "g": self.group, "t": record.topic, "p": record.partition, "o": record.offset, "k": record.key,
                "v": record.value, "e": source_event_id, "c": type(exc).__name__, "tb": trace, "n": attempts,
            })).one()
            if row.inserted:  # a record parked again after a redelivery has its dead letter already
                letter = ParkedEventV1(
                    event_id=uuid.uuid5(_DEADLETTER_NAMESPACE,
                                        f"{self.group}\x1f{record.topic}\x1f{record.partition}\x1f{record.offset}"),
                    parked_id=row.id, consumer_group=self.group, topic=record.topic, partition=record.partition,
                    offset=record.offset, source_event_id=source_event_id, error_class=type(exc).__name__,
                    traceback=trace, attempts=attempts, parked_at=row.parked_at,
                    key_base64=base64.b64encode(record.key).decode() if record.key is not None else None,
                    value_base64=base64.b64encode(record.value).decode(),
                )
                await conn.execute(text(OUTBOX_INSERT), self._outbox.row(
                    self.deadletter_topic, record.key.decode("utf-8", "replace") if record.key else None,
                    letter.model_dump_json().encode(), letter.event_id,
                ))
        if row.inserted:
            PARKED.labels(self.group, record.topic).inc()
        log.error("consumer %s: parked %s/%d offset %d (event %s) after %d attempts: %s; parked_event %d\n%s",
                  self.group, record.topic, record.partition, record.offset, source_event_id or "-", attempts,
                  type(exc).__name__, row.id, trace)
        self._on_park()
        await self._refresh_quietly()
        return int(row.id)

    # --- reading and re-driving -----------------------------------------------------------

    async def refresh_gauge(self) -> None:
        """``wpc_consumer_parked_waiting`` from the table (at start, after each change, periodically)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                text("SELECT topic, count(*) AS n FROM parked_event WHERE consumer_group = :g AND status = 'parked' "
                     "GROUP BY topic"), {"g": self.group})).all()
        counts = {r.topic: int(r.n) for r in rows}
        self._gauge_topics |= set(counts)
        for topic in self._gauge_topics:
            WAITING.labels(self.group, topic).set(counts.get(topic, 0))

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_gauge()
        except Exception as exc:  # a gauge is not worth failing the handler for
            log.info("consumer %s: parked gauge not refreshed (%s)", self.group, type(exc).__name__)

    async def listing(self, *, status: str = "parked", limit: int = 100) -> list[dict[str, Any]]:
        where = "consumer_group = :g" + ("" if status == "all" else " AND status = :s")
        async with self._engine.connect() as conn:
            rows = (await conn.execute(text(f"SELECT {_COLUMNS} FROM parked_event WHERE {where} ORDER BY id "
                                            "LIMIT :n"), {"g": self.group, "s": status, "n": limit})).all()
        return [dict(r._mapping) for r in rows]

    async def get(self, parked_id: int) -> dict[str, Any] | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                text(f"SELECT {_COLUMNS} FROM parked_event WHERE id = :i AND consumer_group = :g"),
                {"i": parked_id, "g": self.group})).one_or_none()
        return dict(row._mapping) if row is not None else None

    async def redrive(self, ids: Sequence[int] | None, reapply: Reapply, *, actor: str) -> list[Redriven]:
        """Apply the parked records ``ids`` (None: all of this group's) again, oldest first.

        Transient trouble is raised (nothing is marked; try again later); any other failure
        keeps the record parked with the new error, and the others are still tried."""
        where = "consumer_group = :g AND status = 'parked'" + ("" if ids is None else " AND id = ANY(:ids)")
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                text(f'SELECT id, topic, partition, "offset", key, value FROM parked_event WHERE {where} ORDER BY id'),
                {"g": self.group, "ids": list(ids or [])})).all()
        results: list[Redriven] = []
        try:
            for row in rows:
                ref = RecordRef(row.topic, row.partition, row.offset,
                                bytes(row.key) if row.key is not None else None, bytes(row.value))
                try:
                    await reapply(ref)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    results.append(await self._still_failing(row.id, exc, actor))
                    continue
                results.append(await self._redriven(row.id, actor))
        finally:
            await self._refresh_quietly()
        return results

    async def _redriven(self, parked_id: int, actor: str) -> Redriven:
        async with self._engine.begin() as conn:
            await conn.execute(text("UPDATE parked_event SET status = 'redriven', redriven_at = now(), "
                                    "redriven_by = :a WHERE id = :i"), {"a": actor, "i": parked_id})
            await _audit(conn, actor, parked_id, self.group, "redriven")
        REDRIVES.labels(self.group, "redriven").inc()
        log.info("consumer %s: parked_event %d re-driven by %s", self.group, parked_id, actor)
        return Redriven(parked_id, "redriven")

    async def _still_failing(self, parked_id: int, exc: BaseException, actor: str) -> Redriven:
        trace = code_trace(exc)
        async with self._engine.begin() as conn:
            await conn.execute(
                text("UPDATE parked_event SET error_class = :c, traceback = :tb, attempts = attempts + 1, "
                     "last_failed_at = now() WHERE id = :i"),
                {"c": type(exc).__name__, "tb": trace, "i": parked_id})
            await _audit(conn, actor, parked_id, self.group, "still failing")
        REDRIVES.labels(self.group, "parked").inc()
        log.warning("consumer %s: parked_event %d still fails (%s); kept parked\n%s", self.group, parked_id,
                    type(exc).__name__, trace)
        return Redriven(parked_id, "parked", type(exc).__name__)


async def _audit(conn: AsyncConnection, actor: str, parked_id: int, group: str, outcome: str) -> None:
    await audit.record(conn, actor, "redrive", detail=f"parked_event={parked_id} group={group} outcome={outcome}")


# --- the API both services mount ------------------------------------------------------------


class ParkedOut(BaseModel):
    """A parked record, without its value (the record's content stays in the database)."""

    id: int
    consumer_group: str
    topic: str
    partition: int
    offset: int
    key: str | None
    event_id: uuid.UUID | None
    error_class: str
    traceback: str
    attempts: int
    parked_at: dt.datetime
    last_failed_at: dt.datetime
    status: Literal["parked", "redriven"]
    redriven_at: dt.datetime | None
    redriven_by: str | None


class RedriveOut(BaseModel):
    id: int
    outcome: Literal["redriven", "parked"]
    error_class: str | None


def _ops(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.has("ops"):
        raise HTTPException(403, "this needs the role ops")
    return user


Ops = Annotated[User, Depends(_ops)]


def _out(row: dict[str, Any]) -> ParkedOut:
    key = row["key"]
    return ParkedOut.model_validate({**row, "key": bytes(key).decode("utf-8", "replace") if key is not None else None})


def parking_router(parking: Parking, reapply: Reapply) -> APIRouter:
    """``GET /v1/parked``, ``GET /v1/parked/{id}``, ``POST /v1/parked/{id}/redrive``: role ``ops``."""
    router = APIRouter(prefix="/v1/parked", tags=["parked"])

    @router.get("", response_model=list[ParkedOut])
    async def list_parked(
        user: Ops,
        status: Literal["parked", "redriven", "all"] = "parked",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[ParkedOut]:
        return [_out(r) for r in await parking.listing(status=status, limit=limit)]

    @router.get("/{parked_id}", response_model=ParkedOut)
    async def get_parked(parked_id: int, user: Ops) -> ParkedOut:
        row = await parking.get(parked_id)
        if row is None:
            raise HTTPException(404, f"no parked record {parked_id} for consumer group {parking.group}")
        return _out(row)

    @router.post("/{parked_id}/redrive", response_model=RedriveOut)
    async def redrive_parked(parked_id: int, user: Ops) -> RedriveOut:
        row = await parking.get(parked_id)
        if row is None:
            raise HTTPException(404, f"no parked record {parked_id} for consumer group {parking.group}")
        if row["status"] != "parked":
            raise HTTPException(409, f"parked record {parked_id} was re-driven already")
        try:
            results = await parking.redrive([parked_id], reapply, actor=user.name)
        except Exception as exc:
            if is_transient(exc):
                raise HTTPException(503, "the database or broker is unavailable; try again") from exc
            raise
        if not results:  # re-driven by someone else meanwhile
            raise HTTPException(409, f"parked record {parked_id} was re-driven already")
        done = results[0]
        return RedriveOut(id=done.id, outcome=done.outcome, error_class=done.error_class)

    return router
