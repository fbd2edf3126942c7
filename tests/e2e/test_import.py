"""`wpc import` against real PostgreSQL: every archive form stores the same rows, those rows
are the ones the live listener stores for the same messages sent over MLLP, and an import
killed mid-way and run again stores every message once."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adt_listener.archive import find_files
from adt_listener.bulk import BulkImport, ImportSummary
from adt_listener.er7 import split_messages
from adt_listener.events import derive_event
from adt_listener.intake import IntakePolicy
from adt_listener.mllp import encode
from adt_listener.senders import load_senders
from adt_listener.service import Listener
from adt_listener.settings import ListenerSettings
from bench.synthetic import synthetic_feed
from tests.conftest import ADMIN_DSN, Broker
from tests.e2e.conftest import listener_settings

ROOT = Path(__file__).resolve().parents[2]
NewDatabase = Callable[[], Awaitable[str]]
# What a row holds about the message itself; not its id, channel, time or ACK (a fresh MSH-7/MSH-10).
_ROW = ("sending_facility", "control_id", "message_type", "trigger_event", "hl7_version", "ack_code", "errors",
        "raw", "charset", "event_id", "patient_key", "content_digest")


@pytest.fixture
async def new_database(template_db: str) -> AsyncIterator[NewDatabase]:
    """More migrated databases in one test, dropped after it."""
    admin = await asyncpg.connect(ADMIN_DSN)
    names: list[str] = []

    async def make() -> str:
        name = f"wpc_t_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        names.append(name)
        return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"

    try:
        yield make
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _import(url: str, paths: list[Path], batch: int = 50) -> ImportSummary:
    settings = ListenerSettings(database_url=url)
    files, missing = find_files(paths)
    assert not missing
    conn = await asyncpg.connect(url)
    try:
        return await BulkImport(settings, load_senders(None), batch_size=batch).run(conn, files)
    finally:
        await conn.close()


async def _rows(url: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT {', '.join(_ROW)} FROM adt_message")
        return sorted((tuple(r) for r in rows), key=repr)
    finally:
        await conn.close()


def _sample_messages(samples_dir: Path) -> list[tuple[Path, list[bytes]]]:
    files = sorted((samples_dir / "messages").glob("*.hl7")) + sorted((samples_dir / "malformed").glob("*.hl7"))
    return [(f, split_messages(f.read_bytes())) for f in files]


def _write_forms(tmp: Path, samples: list[tuple[Path, list[bytes]]]) -> dict[str, list[Path]]:
    messages = [m for _, ms in samples for m in ms]
    batch = b"FHS|^~\\&|HIE\r\nBHS|^~\\&|HIE\r\n" + b"".join(m.replace(b"\r", b"\r\n") for m in messages)
    batch += b"BTS|%d\r\nFTS|1\r\n" % len(messages)
    dump = b"".join(encode(m) for m in messages)
    out = {"batch.hl7": batch, "dump.mllp": dump, "batch.hl7.gz": gzip.compress(batch),
           "dump.mllp.gz": gzip.compress(dump)}
    for name, data in out.items():
        (tmp / name).write_bytes(data)
    return {"directory": [s for s, _ in samples], **{name: [tmp / name] for name in out}}


async def test_every_form_stores_the_same_rows(
    new_database: NewDatabase, samples_dir: Path, tmp_path: Path
) -> None:
    # In one file, a message without an MSH would join the one before it: files of such are
    # compared in the test against the live listener.
    samples = [(f, ms) for f, ms in _sample_messages(samples_dir) if all(m.startswith(b"MSH") for m in ms)]
    expected = sum(len(ms) for _, ms in samples)
    results: dict[str, list[tuple[Any, ...]]] = {}
    for form, paths in _write_forms(tmp_path, samples).items():
        url = await new_database()
        summary = await _import(url, paths)
        assert summary.messages == expected, form
        assert summary.accepted + summary.duplicates + summary.error_count == expected, form
        assert summary.accepted > 0 and summary.error_count > 0, form  # the samples hold refusals too
        results[form] = await _rows(url)
    first = results.pop("directory")
    assert first and all(rows == first for rows in results.values()), [f for f, r in results.items() if r != first]


async def _published_state(url: str) -> dict[str, Any]:
    """Events derived from the stored rows (their own id and time aside), queue and dead letters."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, raw, received_at FROM adt_message WHERE ack_code = 'AA'")
        events = []
        for r in rows:
            event = json.loads(derive_event(bytes(r["raw"]), message_id=r["id"], received_at=r["received_at"],
                                            policy=IntakePolicy()))
            event.pop("message_id")
            event.pop("received_at")
            events.append(json.dumps(event, sort_keys=True))
        dead = await conn.fetch("SELECT key, payload FROM outbox")
        dead_letters = []
        for d in dead:
            body = json.loads(bytes(d["payload"]))
            for varying in ("message_id", "received_at", "channel"):
                body.pop(varying)
            dead_letters.append(json.dumps([d["key"], body], sort_keys=True))
        return {
            "events": sorted(events),
            "queued": await conn.fetchval("SELECT count(*) FROM adt_event_queue")
            + await conn.fetchval("SELECT count(*) FROM adt_event_sent"),
            "dead_letters": sorted(dead_letters),
            "duplicates": await conn.fetchval("SELECT count(*) FROM adt_duplicate"),
        }
    finally:
        await conn.close()


async def test_imported_messages_are_stored_as_live_ones(
    database_url: str, broker: Broker, topics: dict[str, str], new_database: NewDatabase, samples_dir: Path,
) -> None:
    """The 92 samples and the malformed ones sent with `wpc send` to a listener, and imported."""
    files = [f for f, _ in _sample_messages(samples_dir)]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WPC_")}
    settings = listener_settings(database_url, broker.bootstrap, topics)
    # Without relays: what was stored and queued stays in place to compare.
    async with Listener(settings, run_relay=False, run_conformance=False) as listener:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wpc.cli", "send", "--port", str(listener.endpoints.mllp_port),
            "--timeout", "30", *map(str, files), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode in (0, 1), err.decode()
    imported = await new_database()
    await _import(imported, files)

    live_rows, imported_rows = await _rows(database_url), await _rows(imported)
    assert imported_rows == live_rows
    live, bulk = await _published_state(database_url), await _published_state(imported)
    assert live["events"] and live["dead_letters"] and live["duplicates"] == 1  # one sample is a resend
    assert len(live_rows) + live["duplicates"] == sum(len(ms) for _, ms in _sample_messages(samples_dir))
    assert bulk == live


async def _wait_for_rows(url: str, at_least: int, proc: asyncio.subprocess.Process) -> None:
    conn = await asyncpg.connect(url)
    try:
        while await conn.fetchval("SELECT count(*) FROM adt_message") < at_least:
            assert proc.returncode is None, "the import ended before it could be stopped"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_an_import_stopped_or_killed_resumes_with_nothing_twice_and_nothing_lost(
    database_url: str, tmp_path: Path
) -> None:
    n = 12_000
    messages = synthetic_feed(n, seed=41)
    archive = tmp_path / "archive"
    (archive / "singles").mkdir(parents=True)
    (archive / "feed.mllp.gz").write_bytes(gzip.compress(b"".join(encode(m) for m in messages[: n // 2])))
    (archive / "feed.hl7").write_bytes(b"".join(messages[n // 2 : n - 200]))
    for i, m in enumerate(messages[n - 200 :]):
        (archive / "singles" / f"{i:04d}.hl7").write_bytes(m)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WPC_")}
    env["WPC_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "wpc.cli", "import", "--batch", "300", str(archive)]

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )

    # Ctrl-C: the batch in hand is written, the summary says interrupted.
    first = await start()
    await _wait_for_rows(database_url, 1, first)
    first.send_signal(signal.SIGINT)
    out, err = await first.communicate()
    assert first.returncode == 1 and "interrupted" in out.decode(), out.decode() + err.decode()
    # kill -9 in the second file: whatever was committed stays, with its checkpoint.
    second = await start()
    await _wait_for_rows(database_url, n // 2 + 600, second)
    second.kill()
    await second.wait()
    assert second.returncode == -signal.SIGKILL
    third = await start()
    out, err = await third.communicate()
    assert third.returncode == 0, out.decode() + err.decode()
    assert "resumed from a checkpoint" in out.decode()

    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM adt_message")
        distinct = await conn.fetchval("SELECT count(DISTINCT (sending_facility, control_id)) FROM adt_message")
        assert (stored, distinct) == (n, n)
        assert await conn.fetchval("SELECT count(*) FROM adt_duplicate") == 0
        assert await conn.fetchval("SELECT count(*) FROM adt_event_queue") == n
        assert await conn.fetchval("SELECT bool_and(done) FROM import_checkpoint")
    finally:
        await conn.close()
