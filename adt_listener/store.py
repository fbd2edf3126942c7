"""Custody of received messages: the group-commit writer behind every ACK.

An AA promises the sender that the message is ours now. So the raw message, its ACK
and its outbox row (the event for `adt.events`, or the dead letter) are written in ONE
SQL statement, which PostgreSQL commits atomically, and the ACK is released only when
that statement has returned. No crash, restart or broker outage after that can lose
the message: the relay publishes from the outbox whenever the broker is there.

Throughput comes from group commit: one writer task takes everything that queued up
while the previous statement was running and writes it in a single round trip, so 16
busy connections cost one commit, not sixteen. A single writer also keeps the outbox
in arrival order, which is what makes `adt.events` ordered per patient.

Retransmissions: the accepted-message unique index on (MSH-4, MSH-10) turns a resend
into ``ON CONFLICT DO NOTHING``; the resend gets the stored ACK of the original and a
row in adt_duplicate (kept for inspection; `same_bytes` tells a true resend from a
sender reusing a control id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adt_listener.intake import Intake
from schemas.adt_deadletter import AdtDeadLetterV1
from schemas.adt_deadletter import Finding as DeadLetterFinding
from schemas.adt_event import AdtEventV1
from services import metrics

log = logging.getLogger(__name__)

_STATEMENT_TIMEOUT_S = 15.0

_INSERT = """
WITH incoming AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[], $11::bytea[], $12::bytea[], $13::text[], $14::uuid[], $15::text[],
        $16::bool[], $17::text[], $18::text[], $19::bytea[]
    ) WITH ORDINALITY AS t(id, channel, sender, sending_facility, control_id, message_type, trigger_event,
                           hl7_version, ack_code, errors, ack, raw, charset, event_id, patient_key,
                           conformance_checked, topic, key, payload, ord)
), stored AS (
    INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, message_type,
                             trigger_event, hl7_version, ack_code, errors, ack, raw, charset,
                             event_id, patient_key, conformance_checked)
    SELECT id, channel, sender, sending_facility, control_id, message_type, trigger_event,
           hl7_version, ack_code, errors::jsonb, ack, raw, charset, event_id, patient_key,
           conformance_checked
    FROM incoming ORDER BY ord
    ON CONFLICT (sending_facility, control_id) WHERE ack_code = 'AA' DO NOTHING
    RETURNING id
), queued AS (
    INSERT INTO outbox (topic, key, payload, event_id)
    SELECT i.topic, i.key, i.payload, coalesce(i.event_id, i.id)
    FROM incoming i JOIN stored s ON s.id = i.id
    ORDER BY i.ord
)
SELECT id FROM stored
"""

_ORIGINALS = """
SELECT m.id, m.sending_facility, m.control_id, m.ack, m.raw
FROM adt_message m
JOIN unnest($1::text[], $2::text[]) AS d(sending_facility, control_id)
  ON m.sending_facility = d.sending_facility AND m.control_id = d.control_id
WHERE m.ack_code = 'AA'
"""

_DUPLICATES = """
INSERT INTO adt_duplicate (original_id, sender, same_bytes, raw)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bytea[])
"""


# Serializes straight to bytes (model_dump_json gives str, which we would encode again).
_EVENT_JSON: TypeAdapter[AdtEventV1] = TypeAdapter(AdtEventV1)
_NO_FINDINGS = "[]"


class StoreUnavailable(Exception):
    """The database could not take the message: our fault, answer AR 207 and let the sender retry."""


@dataclass(frozen=True, slots=True)
class Topics:
    adt_events: str
    adt_deadletter: str


@dataclass(frozen=True, slots=True)
class Stored:
    message_id: uuid.UUID  # the row that holds the message (the original's, for a duplicate)
    ack: bytes  # the ACK to send: the stored one for a retransmission
    duplicate: bool


@dataclass(slots=True)
class _Pending:
    intake: Intake
    channel: str
    sender: str
    check_conformance: bool
    future: asyncio.Future[Stored] = field(repr=False)


def _outbox_payload(
    item: _Pending, findings: list[dict[str, Any]], received_at: dt.datetime
) -> tuple[str, str | None, bytes]:
    intake = item.intake
    if intake.ack_code == "AA" and intake.event is not None:
        return "adt_events", intake.patient_key, _EVENT_JSON.dump_json(intake.event)
    dead_letter = AdtDeadLetterV1(
        message_id=intake.message_id,
        received_at=received_at,
        channel="http" if item.channel == "http" else "mllp",
        sender=item.sender,
        sending_facility=intake.sending_facility,
        control_id=intake.control_id,
        trigger_event=intake.trigger_event,
        ack_code="AE" if intake.ack_code == "AE" else "AR",
        errors=[DeadLetterFinding.model_validate(f) for f in findings],
        raw_base64=base64.b64encode(intake.raw).decode(),
    ).model_dump_json().encode()
    return "adt_deadletter", intake.sending_facility or None, dead_letter


class MessageStore:
    """Queue of messages waiting for custody, drained by one group-commit writer."""

    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        *,
        max_batch: int = 512,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._topics = topics
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._raw: Any = None  # asyncpg connection of _conn

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="message-store")

    async def stop(self) -> None:
        """Write everything already queued, then stop (the SIGTERM drain)."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None
        if self._conn is not None:
            self._raw = None
            await self._conn.close()
            self._conn = None

    async def store(self, intake: Intake, *, channel: str, sender: str, check_conformance: bool) -> Stored:
        if self._task is None or self._task.done():
            raise StoreUnavailable("store is not running")
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(intake, channel, sender, check_conformance, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(_STATEMENT_TIMEOUT_S):  # no Task per batch, unlike wait_for
                results = await self._write_batch(batch)
        except Exception as exc:  # every database failure means the same to the sender: not stored
            log.error("store: batch of %d not stored: %s", len(batch), type(exc).__name__)
            metrics.STORE_FAILURES.inc()
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(StoreUnavailable(type(exc).__name__))
            return
        metrics.STORE_BATCH_SIZE.observe(len(batch))
        metrics.STORE_COMMIT_SECONDS.observe(time.perf_counter() - started)
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        if self._on_commit is not None:
            self._on_commit()

    async def _write_batch(self, batch: list[_Pending]) -> list[Stored]:
        # One array per column (unnest ... WITH ORDINALITY numbers the rows in batch order).
        cols: list[list[object]] = [[] for _ in range(19)]
        (c_id, c_channel, c_sender, c_facility, c_control, c_type, c_trigger, c_version, c_code, c_errors,
         c_ack, c_raw, c_charset, c_event, c_patient, c_checked, c_topic, c_key, c_payload) = cols
        now = dt.datetime.now(dt.UTC)
        for item in batch:
            i = item.intake
            findings = [asdict(f) for f in i.findings]
            kind, key, payload = _outbox_payload(item, findings, now)
            c_id.append(i.message_id)
            c_channel.append(item.channel)
            c_sender.append(item.sender)
            c_facility.append(i.sending_facility)
            c_control.append(i.control_id)
            c_type.append(i.message_type)
            c_trigger.append(i.trigger_event)
            c_version.append(i.hl7_version)
            c_code.append(i.ack_code)
            c_errors.append(json.dumps(findings) if findings else _NO_FINDINGS)
            c_ack.append(i.ack)
            c_raw.append(i.raw)
            c_charset.append(i.charset)
            c_event.append(i.event_id)
            c_patient.append(i.patient_key)
            c_checked.append(not item.check_conformance)
            c_topic.append(self._topics.adt_events if kind == "adt_events" else self._topics.adt_deadletter)
            c_key.append(key)
            c_payload.append(payload)

        driver = await self._driver()
        try:
            rows = await driver.fetch(_INSERT, *cols)
            inserted = {r["id"] for r in rows}
            results: list[Stored | None] = [
                Stored(item.intake.message_id, item.intake.ack, False) if item.intake.message_id in inserted
                else None
                for item in batch
            ]
            missing = [n for n, r in enumerate(results) if r is None]
            if missing:
                await self._resolve_duplicates(driver, batch, missing, results)
        except BaseException:
            await self._drop_connection()
            raise
        return [r for r in results if r is not None]

    async def _driver(self) -> Any:
        """The writer's own connection, kept across batches: a pool checkout would cost a
        pre-ping round trip per commit. Reconnects after any failure.

        The asyncpg connection under it is looked up once: SQLAlchemy's
        `get_raw_connection` runs through a greenlet, a cost paid per commit otherwise."""
        if self._raw is None:
            if self._conn is None:
                self._conn = await self._engine.connect()
            raw_conn = await self._conn.get_raw_connection()
            self._raw = raw_conn.driver_connection
        return self._raw

    async def _drop_connection(self) -> None:
        self._raw = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _resolve_duplicates(
        self, driver: Any, batch: list[_Pending], missing: list[int], results: list[Stored | None]
    ) -> None:
        keys = [(batch[n].intake.sending_facility, batch[n].intake.control_id or "") for n in missing]
        originals = await driver.fetch(
            _ORIGINALS, [k[0] for k in keys], [k[1] for k in keys]
        )
        by_key = {(r["sending_facility"], r["control_id"]): r for r in originals}
        dup_cols: list[list[object]] = [[], [], [], []]
        for n, key in zip(missing, keys, strict=True):
            original = by_key[key]
            item = batch[n]
            results[n] = Stored(original["id"], bytes(original["ack"]), True)
            same = bytes(original["raw"]) == item.intake.raw
            for col, value in zip(dup_cols, (original["id"], item.sender, same, item.intake.raw), strict=True):
                col.append(value)
            metrics.DUPLICATES.labels(facility=metrics.facility_label(key[0]), same_bytes=str(same).lower()).inc()
        await driver.execute(_DUPLICATES, *dup_cols)
