"""The bulk import of ADT history (`wpc import`): archive files in, stored as live messages are.

The same decision as a live message (`Ingestor.decide`: intake, the sender owning MSH-4
in the senders file, the size limit of a frame, the conformance sample), the same rows
(`store.write_batch`: ``adt_message``, a row in ``adt_event_queue`` for an accepted
message, a dead letter in ``outbox`` for the others, ``adt_duplicate`` for a
retransmission), the same dedupe (MSH-4, MSH-10 and content digest); no ACK is sent.
The listener's relays, running as they do for live traffic, derive and publish the
events (`adt_listener.events`) and the dead letters; the consumers do the rest, as for
any message.

Where the live path commits what a few connections sent, the import commits sets: one
INSERT ... SELECT FROM unnest per batch of ``batch_size`` messages, and in the same
transaction its checkpoint (``import_checkpoint``, migration 0011: per file, the offset
where its next message begins). A run stopped anywhere (Ctrl-C, kill, a crash) has
committed whole batches with their checkpoints or nothing of a batch; run again, it
skips the files done and reads the others from their offset: nothing twice, nothing
lost. One import runs at a time per database (an advisory lock).

Deciding (Python, one core) and writing (PostgreSQL) overlap: a batch is written while
the next one is decided, the decision loop yielding to the event loop now and then so the
write's round trips go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adt_listener.archive import ArchiveFile, read_messages
from adt_listener.ingest import Ingestor
from adt_listener.intake import IntakePolicy
from adt_listener.mllp import HEAD_BYTES
from adt_listener.senders import Senders
from adt_listener.settings import ListenerSettings
from adt_listener.store import Custody, Stored, write_batch

log = logging.getLogger(__name__)

__all__ = ["CHANNEL", "BulkImport", "ImportBusy", "ImportProgress", "ImportSummary"]

CHANNEL = "import"  # adt_message.channel of imported messages
_LOCK = "SELECT pg_try_advisory_lock(hashtext('wpc import'))"
_CHECKPOINTS = """
SELECT path, content_offset, messages, done FROM import_checkpoint
WHERE (path, size, mtime_ns) IN (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]))
"""
_SAVE = """
INSERT INTO import_checkpoint (path, size, mtime_ns, content_offset, messages, done, updated_at)
SELECT p, s, m, o, n, d, now()
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[]) AS t(p, s, m, o, n, d)
ON CONFLICT (path, size, mtime_ns) DO UPDATE
SET content_offset = excluded.content_offset, messages = excluded.messages, done = excluded.done,
    updated_at = excluded.updated_at
"""
_YIELD_EVERY = 64  # decisions between two turns of the event loop (the write in flight goes on)
_PROGRESS_EVERY = 512


class ImportBusy(Exception):
    """Another import holds this database's import lock."""


@dataclass
class ImportProgress:
    bytes_done: int  # of the files on disk (compressed, for gzip)
    bytes_total: int
    messages: int  # decided in this run
    committed: int  # of those, in committed batches
    started: float  # time.monotonic() of the start


@dataclass
class ImportSummary:
    files: int = 0
    files_skipped: int = 0  # imported to their end by an earlier run
    files_resumed: int = 0  # begun by an earlier run, read on from its checkpoint
    messages: int = 0  # committed in this run (stored rows and duplicates)
    accepted: int = 0  # AA, stored as new
    duplicates: int = 0  # AA already stored (same MSH-4, MSH-10 and content)
    errors: Counter[str] = field(default_factory=Counter)  # kind -> count: AE/AR findings, unreadable parts
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class _Mark:
    file: ArchiveFile
    offset: int
    messages: int
    done: bool = False


@dataclass
class _Batch:
    items: list[Custody] = field(default_factory=list)
    marks: dict[str, _Mark] = field(default_factory=dict)  # by path: the last position reached
    problems: Counter[str] = field(default_factory=Counter)  # pieces that are no message


def _kind(custody: Custody) -> str:
    """An error's kind for the summary: ACK code, then the first error's code, place and text."""
    intake = custody.intake
    first = next((f for f in intake.findings if f.severity == "E"), None)
    if first is None:
        return intake.ack_code
    return f"{intake.ack_code} {first.code} {first.location or '-'}: {first.text}"


class BulkImport:
    """One import run on an asyncpg connection (`run`)."""

    def __init__(
        self,
        settings: ListenerSettings,
        senders: Senders,
        *,
        batch_size: int = 2000,
        progress: Callable[[ImportProgress], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        policy = IntakePolicy(
            accepted_processing_ids=settings.processing_ids(),
            medi_cal_authorities=settings.medi_cal_authority_set(),
        )
        self._ingestor = Ingestor(None, policy, senders)
        self._dead_letter_topic = settings.topic_adt_deadletter
        self._service = settings.service
        self._max_frame = settings.mllp_max_frame_bytes
        self._batch_size = batch_size
        self._progress = progress
        self._stop = stop or asyncio.Event()

    async def run(self, driver: Any, files: Sequence[ArchiveFile]) -> ImportSummary:
        """Import ``files`` in order on ``driver`` (an asyncpg connection, not in a transaction).

        Raises `ImportBusy` when another import runs on the database. Setting ``stop``
        ends the run after the batch being written; the summary then says interrupted."""
        if not await driver.fetchval(_LOCK):
            raise ImportBusy("another `wpc import` is running on this database")
        summary = ImportSummary(files=len(files))
        started = time.monotonic()
        try:
            await self._run(driver, files, summary, started)
        finally:
            summary.seconds = time.monotonic() - started
            await driver.execute("SELECT pg_advisory_unlock(hashtext('wpc import'))")
        return summary

    async def _run(self, driver: Any, files: Sequence[ArchiveFile], summary: ImportSummary, started: float) -> None:
        rows = await driver.fetch(
            _CHECKPOINTS, [str(f.path) for f in files], [f.size for f in files], [f.mtime_ns for f in files]
        )
        saved = {r["path"]: r for r in rows}
        total = sum(f.size for f in files)
        done_bytes = 0
        decided = 0
        batch = _Batch()
        writing: asyncio.Task[None] | None = None

        def report(read: int) -> None:
            if self._progress is not None:
                self._progress(ImportProgress(done_bytes + read, total, decided, summary.messages, started))

        async def flush() -> None:
            nonlocal batch, writing
            if writing is not None:
                await writing  # one batch in flight: checkpoints advance in order
            writing = asyncio.create_task(self._write(driver, batch, summary))
            batch = _Batch()

        for file in files:
            if self._stop.is_set():
                break
            checkpoint = saved.get(str(file.path))
            if checkpoint is not None and checkpoint["done"]:
                summary.files_skipped += 1
                done_bytes += file.size
                continue
            mark = _Mark(file, 0, 0)
            if checkpoint is not None and checkpoint["content_offset"] > 0:
                summary.files_resumed += 1
                mark = _Mark(file, checkpoint["content_offset"], checkpoint["messages"])
            try:
                for piece in read_messages(file, mark.offset):
                    mark = _Mark(file, piece.end, mark.messages + 1)
                    batch.marks[str(file.path)] = mark
                    if piece.problem is not None:
                        batch.problems[piece.problem] += 1
                    else:
                        batch.items.append(self._decide(piece.raw))
                        decided += 1
                    if decided % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                        if decided % _PROGRESS_EVERY == 0:
                            report(piece.read)
                    if len(batch.items) >= self._batch_size:
                        await flush()
                    if self._stop.is_set():
                        break
                else:
                    batch.marks[str(file.path)] = _Mark(file, mark.offset, mark.messages, done=True)
            except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                summary.unreadable.append((str(file.path), reason))
                batch.problems["unreadable file"] += 1
                log.warning("import: %s: stopped reading: %s", file.path, reason)
            done_bytes += file.size
            if self._stop.is_set():
                break
        if batch.items or batch.marks or batch.problems:
            await flush()
        if writing is not None:
            await writing
        summary.interrupted = self._stop.is_set()
        report(0)

    def _decide(self, raw: bytes) -> Custody:
        oversized = None
        if len(raw) > self._max_frame:  # as the MLLP server: rejected, its head kept for MSH-10
            raw, oversized = raw[:HEAD_BYTES], self._max_frame
        d = self._ingestor.decide(raw, channel=CHANNEL, sender=None, oversized=oversized)
        return self._ingestor.custody(d)

    async def _write(self, driver: Any, batch: _Batch, summary: ImportSummary) -> None:
        marks = list(batch.marks.values())
        async with driver.transaction():
            results: list[Stored] = (
                await write_batch(driver, batch.items, self._dead_letter_topic, self._service)
                if batch.items else []
            )
            if marks:
                await driver.execute(
                    _SAVE,
                    [str(m.file.path) for m in marks], [m.file.size for m in marks],
                    [m.file.mtime_ns for m in marks], [m.offset for m in marks],
                    [m.messages for m in marks], [m.done for m in marks],
                )
        # Counted once committed: an interrupted batch is in no figure, nor in the database.
        summary.messages += len(results)
        summary.errors.update(batch.problems)
        for item, result in zip(batch.items, results, strict=True):
            if result.duplicate:
                summary.duplicates += 1
            elif item.intake.ack_code == "AA":
                summary.accepted += 1
            else:
                summary.errors[_kind(item)] += 1
