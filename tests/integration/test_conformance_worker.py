"""ConformanceWorker against the real PostgreSQL: claims, findings, flags."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.conformance import ConformanceWorker
from services.db import create_engine

INSERT = text(
    """
    INSERT INTO adt_message (id, channel, sender, sending_facility, control_id, message_type,
                             trigger_event, hl7_version, ack_code, ack, raw, charset, conformance_checked)
    VALUES (:id, 'mllp', 'test', :facility, :control_id, 'ADT', :trigger, :version, 'AA', 'ACK',
            :raw, NULL, :checked)
    """
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
def worker(engine: AsyncEngine) -> Iterator[ConformanceWorker]:
    w = ConformanceWorker(engine, batch=2, interval_s=0.05)
    yield w
    w.close()


async def insert(
    engine: AsyncEngine, raw: bytes, *, facility: str = "FAC", checked: bool = False
) -> uuid.UUID:
    mid = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            INSERT,
            {
                "id": mid,
                "facility": facility,
                "control_id": mid.hex,
                "trigger": "A01",
                "version": "2.3.1",
                "raw": raw,
                "checked": checked,
            },
        )
    return mid


async def findings_of(engine: AsyncEngine, mid: uuid.UUID) -> list[tuple[str, str | None, str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT kind, location, sending_facility, hl7_version FROM conformance_finding"
                " WHERE message_id = :id ORDER BY id"
            ),
            {"id": mid},
        )
        return [(r.kind, r.location, r.sending_facility, r.hl7_version) for r in rows.all()]


async def checked_flag(engine: AsyncEngine, mid: uuid.UUID) -> bool:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT conformance_checked FROM adt_message WHERE id = :id"), {"id": mid}
        )
        return bool(result.scalar_one())


async def test_run_once_checks_selected_rows_and_leaves_others(
    engine: AsyncEngine, worker: ConformanceWorker, samples_dir: Path
) -> None:
    bad = await insert(engine, (samples_dir / "malformed/006_santedb_A01.hl7").read_bytes(), facility="SANTE")
    clean = await insert(engine, (samples_dir / "messages/035_hl7apy_A01.hl7").read_bytes())
    garbage = await insert(engine, (samples_dir / "malformed/002_hl7apy_A01.hl7").read_bytes())
    # Not selected by its sender's mode: the listener stored it already "checked".
    skipped = await insert(engine, (samples_dir / "malformed/006_santedb_A01.hl7").read_bytes(), checked=True)

    assert await worker.run_once() == 2  # batch of 2, oldest first
    # counted before the first round: three selected, none checked yet
    assert REGISTRY.get_sample_value("wpc_conformance_backlog") == 3
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    bad_findings = await findings_of(engine, bad)
    assert ("table", "PID-8", "SANTE", "2.3.1") in bad_findings
    assert ("structure", "PV1", "SANTE", "2.3.1") in bad_findings
    assert await findings_of(engine, clean) == []
    assert [f[0] for f in await findings_of(engine, garbage)] == ["unparseable"]
    for mid in (bad, clean, garbage):
        assert await checked_flag(engine, mid) is True

    assert await findings_of(engine, skipped) == []
    assert await checked_flag(engine, skipped) is True


async def test_rows_locked_by_another_transaction_are_skipped(
    engine: AsyncEngine, worker: ConformanceWorker, samples_dir: Path
) -> None:
    raw = (samples_dir / "messages/035_hl7apy_A01.hl7").read_bytes()
    locked = await insert(engine, raw)
    free = await insert(engine, raw)
    async with engine.connect() as other:
        tx = await other.begin()
        await other.execute(text("SELECT 1 FROM adt_message WHERE id = :id FOR UPDATE"), {"id": locked})
        assert await worker.run_once() == 1
        await tx.rollback()
    assert await checked_flag(engine, free) is True
    assert await checked_flag(engine, locked) is False
    assert await worker.run_once() == 1


async def test_run_drains_the_backlog_and_stops(
    engine: AsyncEngine, worker: ConformanceWorker, samples_dir: Path
) -> None:
    raw = (samples_dir / "messages/079_rusthl7_A08.hl7").read_bytes()
    ids = [await insert(engine, raw) for _ in range(5)]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    for _ in range(200):
        if all([await checked_flag(engine, i) for i in ids]):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    for i in ids:
        assert await checked_flag(engine, i) is True
        assert {f[:2] for f in await findings_of(engine, i)} == {("structure", "PID"), ("structure", "PV1")}


async def test_run_survives_a_database_outage(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = create_engine("postgresql://nobody@127.0.0.1:1/none")
    broken = ConformanceWorker(unreachable, interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(broken.run(stop))
    await asyncio.sleep(0.3)
    assert not task.done()  # still retrying, not crashed
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    broken.close()
    await unreachable.dispose()
    assert any("round failed" in r.getMessage() for r in caplog.records)
