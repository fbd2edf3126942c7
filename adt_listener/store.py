"""Custody of received messages: the group-commit writer behind every ACK.

An AA promises the sender that the message is ours now. So the raw message, its ACK
and what must be published about it are written in ONE SQL statement, which
PostgreSQL commits atomically, and the ACK is released only when that statement has
returned. No crash, restart or broker outage after that can lose the message:

* an accepted message gets a row in ``adt_event_queue``; its `adt.events` record is
  derived from the stored raw message afterwards and published by the events relay
  (`adt_listener.events`), so the ACK never waits for the event to be built;
* a rejected one gets its dead letter, built here, in ``outbox`` (the listener's rows: its relay).

Throughput comes from group commit: a writer takes everything that queued up while
it was busy and writes it in a single round trip, so 16 busy connections cost one
commit, not sixteen. Under load a writer also lingers: while messages arrive faster than
one per ``linger_s`` on average, the writer whose turn it is waits ``linger_s`` (2 ms by
default, `WPC_COMMIT_LINGER_MS`) before it takes the queue, so a commit carries several
messages rather than the one or two that came since the last; one writer collects at a
time. Below that rate nobody waits. At 1,000 ADT/s it saved the listener and PostgreSQL
~0.14 ms of CPU a message, and the pipeline's p99 fell by half (bench/README.md). There
are a few writers (``writers``), each on a connection of its own, so that a batch is
sent while the previous one waits for its round trip:
idle, a commit of 8 messages takes ~0.9 ms here (of which ~0.13 ms is the WAL flush,
`pg_test_fsync`), and PostgreSQL spends ~250 µs of CPU per statement plus ~50 µs per
message (measured with a batch of 8 on 2026-11-22; see bench/README.md).
PostgreSQL flushes concurrent commits together.

Order: the relay publishes ``adt_event_queue`` in id order, which is commit order
except between batches committed concurrently. Those never hold two messages one of
which the sender sent after the other's ACK, and the MLLP server hands a connection's
next frames to the store only after the ACKs of the previous ones, so a connection's
messages always commit in the order it sent them: `adt.events` keeps each sender's
order per patient.

Retransmissions: a retransmission is the same message again, and the same message is
the same MSH-4, MSH-10 *and content digest* (`adt_listener.digest`: the bytes, but for
MSH-7 and segment terminators). The accepted-message unique index on those three turns
a resend into ``ON CONFLICT DO NOTHING``; the resend gets the ACK stored for the
original, marked in MSA-3 as a retransmission (`ack.mark_retransmission`), and a row in
adt_duplicate (kept for inspection; ``same_bytes`` tells a byte-identical resend from
one with a new MSH-7). A *different* message under a control id already used (counters
reset, ids built from timestamps) has another digest: it is stored, answered and
published as the new message it is, also when both arrive in one batch, and the reuse
is reported per facility by `adt_listener.feed_report`.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adt_listener.ack import mark_retransmission
from adt_listener.intake import Intake
from adt_listener.settings import ListenerSettings
from schemas.adt_deadletter import AdtDeadLetterV1
from schemas.adt_deadletter import Finding as DeadLetterFinding
from services import metrics
from services.db import driver_connection
from services.outbox import Outbox

log = logging.getLogger(__name__)

_STATEMENT_TIMEOUT_S = 15.0

_INSERT = """
WITH incoming AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[], $11::bytea[], $12::bytea[], $13::text[], $14::uuid[], $15::text[],
        $16::bool[], $17::timestamptz[], $18::text[], $19::text[], $20::bytea[], $21::bytea[]
    ) WITH ORDINALITY AS t(id, channel, sender, sending_facility, control_id, message_type, trigger_event,
                           hl7_version, ack_code, errors, ack, raw, charset, event_id, patient_key,
                           conformance_checked, received_at, topic, key, payload, content_digest, ord)
), stored AS (
    INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, message_type,
                             trigger_event, hl7_version, ack_code, errors, ack, raw, charset,
                             event_id, patient_key, conformance_checked, received_at, content_digest)
    SELECT id, channel, sender, sending_facility, control_id, message_type, trigger_event,
           hl7_version, ack_code, errors::jsonb, ack, raw, charset, event_id, patient_key,
           conformance_checked, received_at, content_digest
    -- Key order, not arrival order: concurrent writers then take the unique index's
    -- locks in the same order and two crossing retransmissions cannot deadlock; within
    -- a key, the first to arrive is the one kept. (adt_message has no order of its own:
    -- the queue and outbox rows below are written in arrival order.)
    FROM incoming ORDER BY sending_facility, control_id, content_digest, ord
    ON CONFLICT (sending_facility, control_id, content_digest) WHERE ack_code = 'AA' DO NOTHING
    RETURNING id
), queued AS (
    INSERT INTO adt_event_queue (message_id)
    SELECT i.id FROM incoming i JOIN stored s ON s.id = i.id
    WHERE i.payload IS NULL
    ORDER BY i.ord
), dead AS (
    INSERT INTO outbox (service, topic, key, payload, event_id)
    SELECT $22::text, i.topic, i.key, i.payload, coalesce(i.event_id, i.id)
    FROM incoming i JOIN stored s ON s.id = i.id
    WHERE i.payload IS NOT NULL
    ORDER BY i.ord
)
SELECT id FROM stored
"""

_ORIGINALS = """
SELECT m.id, m.sending_facility, m.control_id, m.content_digest, m.ack, m.raw
FROM adt_message m
JOIN unnest($1::text[], $2::text[], $3::bytea[]) AS d(sending_facility, control_id, content_digest)
  ON m.sending_facility = d.sending_facility AND m.control_id = d.control_id
 AND m.content_digest = d.content_digest
WHERE m.ack_code = 'AA'
"""

_DUPLICATES = """
INSERT INTO adt_duplicate (original_id, sender, same_bytes, raw)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bytea[])
"""


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
    ack: bytes  # the ACK to send: for a retransmission, the stored one marked as such in MSA-3
    duplicate: bool  # a retransmission of a message already stored


@dataclass(frozen=True, slots=True)
class Custody:
    """A decided message and what its row records about how it came."""

    intake: Intake
    channel: str
    sender: str
    check_conformance: bool
    received_at: dt.datetime  # the time intake decided with; the event derived later carries it


# What a writer calls once a group is committed: its results in order, or None (not stored).
OnStored = Callable[[list[Stored] | None], None]


@dataclass(slots=True)
class _Group:
    items: list[Custody]
    on_stored: OnStored = field(repr=False)


def _dead_letter(item: Custody, findings: list[dict[str, Any]]) -> tuple[str | None, bytes]:
    """(key, payload) of the `adt.deadletter` record of a rejected message."""
    intake = item.intake
    dead_letter = AdtDeadLetterV1(
        message_id=intake.message_id,
        received_at=item.received_at,
        channel="http" if item.channel == "http" else "mllp",
        sender=item.sender,
        sending_facility=intake.sending_facility,
        control_id=intake.control_id,
        trigger_event=intake.trigger_event,
        ack_code="AE" if intake.ack_code == "AE" else "AR",
        errors=[DeadLetterFinding.model_validate(f) for f in findings],
        raw_base64=base64.b64encode(intake.raw).decode(),
    ).model_dump_json().encode()
    return intake.sending_facility or None, dead_letter


class _Lane:
    """One writer's own connection, kept across batches: a pool checkout would cost a
    pre-ping round trip per commit. Reconnects after any failure.

    The asyncpg connection under it (`services.db.driver_connection`) is looked up once:
    it runs through a greenlet, a cost paid per commit otherwise."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._raw: Any = None  # asyncpg connection of _conn

    async def driver(self) -> Any:
        if self._raw is None:
            if self._conn is None:
                self._conn = await self._engine.connect()
            self._raw = await driver_connection(self._conn)
        return self._raw

    async def drop(self) -> None:
        self._raw = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        self._raw = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class MessageStore:
    """Queue of messages waiting for custody, drained by a few group-commit writers."""

    def __init__(
        self,
        engine: AsyncEngine,
        topics: Topics,
        *,
        max_batch: int = 512,
        writers: int = 2,
        linger_s: float = 0.0,
        on_events: Callable[[], None] | None = None,
        on_dead_letters: Callable[[], None] | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        """``on_events`` / ``on_dead_letters``: called after a commit that queued events /
        wrote dead letters, to wake the relay that publishes them. ``outbox``: the listener's
        (`services.outbox`; by default one of these two topics). ``linger_s``: the group
        commit's wait under load (module docstring); 0: never wait."""
        if writers < 1:
            raise ValueError(f"writers must be positive, got {writers}")
        if linger_s < 0:
            raise ValueError(f"linger_s must not be negative, got {linger_s}")
        self._engine = engine
        self._topics = topics
        self._outbox = outbox or Outbox.of(ListenerSettings.service, (topics.adt_events, topics.adt_deadletter))
        self._outbox.check(topics.adt_deadletter)  # the one topic this store writes to the outbox
        self._max_batch = max_batch
        self._on_events = on_events
        self._on_dead_letters = on_dead_letters
        self._queue: asyncio.Queue[_Group | None] = asyncio.Queue()
        self._linger_s = linger_s
        self._gap_s = 1.0  # seconds between two submissions, exponentially averaged
        self._last_submit = 0.0
        self._collecting = asyncio.Lock()  # one writer waits for, and takes, the queue at a time
        self._lanes = [_Lane(engine) for _ in range(writers)]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"message-store-{n}") for n, lane in enumerate(self._lanes)
        ]

    async def stop(self) -> None:
        """Write everything already queued, then stop (the SIGTERM drain)."""
        if not self._tasks:
            return
        for _ in self._tasks:
            await self._queue.put(None)  # one per writer: each stops at the first it takes
        await asyncio.gather(*self._tasks)
        self._tasks = []
        for lane in self._lanes:
            await lane.close()

    def submit(self, group: list[Custody], on_stored: OnStored) -> None:
        """Queue messages for custody. They are committed in one statement, in this order,
        and `on_stored` is then called with their results (None if the commit failed).
        Raises `StoreUnavailable` at once when no writer runs."""
        if not self._tasks or any(t.done() for t in self._tasks):
            raise StoreUnavailable("store is not running")
        now = time.monotonic()
        self._gap_s = 0.8 * self._gap_s + 0.2 * min(now - self._last_submit, 1.0)
        self._last_submit = now
        self._queue.put_nowait(_Group(group, on_stored))

    def lingering(self) -> bool:
        """Whether a writer now waits ``linger_s`` before taking the queue (messages arrive
        faster than one per ``linger_s``, on average)."""
        return self._gap_s < self._linger_s

    async def store(self, item: Custody) -> Stored:
        """Commit one message and return its result."""
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()

        def stored(results: list[Stored] | None) -> None:
            if future.done():
                return
            if results is None:
                future.set_exception(StoreUnavailable("not stored"))
            else:
                future.set_result(results[0])

        self.submit([item], stored)
        return await future

    async def _run(self, lane: _Lane) -> None:
        stopping = False
        while not stopping:
            async with self._collecting:  # the other writers meanwhile commit what they took
                first = await self._queue.get()
                if first is None:
                    break
                if self.lingering():
                    await asyncio.sleep(self._linger_s)
                groups = [first]
                size = len(first.items)
                while size < self._max_batch and not self._queue.empty():
                    group = self._queue.get_nowait()
                    if group is None:
                        stopping = True
                        break
                    groups.append(group)
                    size += len(group.items)
            await self._write(lane, groups)

    async def _write(self, lane: _Lane, groups: list[_Group]) -> None:
        batch = [item for group in groups for item in group.items]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(_STATEMENT_TIMEOUT_S):  # no Task per batch, unlike wait_for
                results: list[Stored] | None = await self._write_batch(lane, batch)
        except Exception as exc:  # every database failure means the same to the sender: not stored
            log.error("store: batch of %d not stored: %s", len(batch), type(exc).__name__)
            metrics.STORE_FAILURES.inc()
            results = None
        else:
            metrics.STORE_BATCH_SIZE.observe(len(batch))
            metrics.STORE_COMMIT_SECONDS.observe(time.perf_counter() - started)
        offset = 0
        for group in groups:
            n = len(group.items)
            try:
                group.on_stored(None if results is None else results[offset:offset + n])
            except Exception:  # a caller's bug must not stop the writer
                log.exception("store: result callback failed")
            offset += n
        if results is None:
            return
        events = dead = False
        for item, result in zip(batch, results, strict=True):
            if not result.duplicate:
                if item.intake.ack_code == "AA":
                    events = True
                else:
                    dead = True
        if events and self._on_events is not None:
            self._on_events()
        if dead and self._on_dead_letters is not None:
            self._on_dead_letters()

    async def _write_batch(self, lane: _Lane, batch: list[Custody]) -> list[Stored]:
        driver = await lane.driver()
        try:
            return await write_batch(driver, batch, self._topics.adt_deadletter, self._outbox.service)
        except BaseException:
            await lane.drop()
            raise


def _columns(batch: Sequence[Custody], dead_letter_topic: str) -> list[list[object]]:
    """One array per column of `_INSERT` (unnest ... WITH ORDINALITY numbers the rows in batch order)."""
    cols: list[list[object]] = [[] for _ in range(21)]
    (c_id, c_channel, c_sender, c_facility, c_control, c_type, c_trigger, c_version, c_code, c_errors,
     c_ack, c_raw, c_charset, c_event, c_patient, c_checked, c_received, c_topic, c_key, c_payload,
     c_digest) = cols
    for item in batch:
        i = item.intake
        findings = [asdict(f) for f in i.findings] if i.findings else []
        if i.ack_code == "AA":
            # The event is derived after the commit (adt_listener.events): the row in
            # adt_event_queue is all this statement writes for it (payload NULL).
            topic, key, payload = None, None, None
        else:
            topic = dead_letter_topic
            key, payload = _dead_letter(item, findings)
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
        c_received.append(item.received_at)
        c_topic.append(topic)
        c_key.append(key)
        c_payload.append(payload)
        c_digest.append(i.content_digest)
    return cols


async def write_batch(driver: Any, batch: Sequence[Custody], dead_letter_topic: str, service: str) -> list[Stored]:
    """Write decided messages as one set (the statement `_INSERT`, then the retransmissions'
    rows in ``adt_duplicate``) on an asyncpg connection; the results in batch order.

    The caller owns the transaction: the live store commits each statement on its own
    (autocommit; the duplicates' rows are only for inspection), the bulk import
    (`adt_listener.bulk`) wraps both and its checkpoint in one."""
    rows = await driver.fetch(_INSERT, *_columns(batch, dead_letter_topic), service)
    inserted = {r["id"] for r in rows}
    results: list[Stored | None] = [
        Stored(item.intake.message_id, item.intake.ack, False) if item.intake.message_id in inserted else None
        for item in batch
    ]
    missing = [n for n, r in enumerate(results) if r is None]
    if missing:
        await _resolve_duplicates(driver, batch, missing, results)
    return [r for r in results if r is not None]


async def _resolve_duplicates(
    driver: Any, batch: Sequence[Custody], missing: list[int], results: list[Stored | None]
) -> None:
    keys = [
        (batch[n].intake.sending_facility, batch[n].intake.control_id or "", batch[n].intake.content_digest)
        for n in missing
    ]
    originals = await driver.fetch(
        _ORIGINALS, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    )
    by_key = {(r["sending_facility"], r["control_id"], bytes(r["content_digest"])): r for r in originals}
    dup_cols: list[list[object]] = [[], [], [], []]
    for n, key in zip(missing, keys, strict=True):
        original = by_key[key]
        item = batch[n]
        results[n] = Stored(original["id"], mark_retransmission(bytes(original["ack"])), True)
        same = bytes(original["raw"]) == item.intake.raw
        for col, value in zip(dup_cols, (original["id"], item.sender, same, item.intake.raw), strict=True):
            col.append(value)
        metrics.DUPLICATES.labels(facility=metrics.facility_label(key[0]), same_bytes=str(same).lower()).inc()
    await driver.execute(_DUPLICATES, *dup_cols)
