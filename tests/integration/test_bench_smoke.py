"""`wpc bench ingest` end to end, `wpc bench enroll`'s live feed and `wpc bench import`,
very short: the figures are printed, not asserted.

What is asserted: the last line is the JSON report, every target accepted messages,
and every AA our listener sent is a row in adt_message (custody before the ACK); every
event of the enrollment feed, in order or late, is applied.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from adt_listener.settings import ListenerSettings
from bench.bulk import ImportOptions, bench_import
from bench.enroll import _dsn, load_county, replay_live
from bench.ingest import IngestOptions, ingest
from enrollment_svc.service import rules_of
from enrollment_svc.settings import EnrollmentSettings
from tests.conftest import ADMIN_DSN, Broker


@pytest.fixture
async def bench_database() -> AsyncIterator[str]:
    name = f"wpc_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.timeout(90)
async def test_bench_ingest_smoke(
    bench_database: str, broker: Broker, topics: dict[str, str], tmp_path: Path
) -> None:
    settings = ListenerSettings(
        database_url=bench_database,
        kafka_bootstrap_servers=broker.bootstrap,
        data_dir=tmp_path,
        topic_adt_events=topics["adt_events"],
        topic_adt_deadletter=topics["adt_deadletter"],
    )
    lines: list[str] = []
    options = IngestOptions(connections=2, duration=1.0, warmup=0.2, rate=50.0, rate_duration=1.0)

    report = await ingest(options, settings, fresh_database=False, out=lines.append)

    assert json.loads(lines[-1]) == report
    for target in ("ours", "peer", "bare", "durable"):
        assert report["targets"][target]["accepted"] > 0, target
    assert report["ratios"]["ours_to_durable"] is not None
    assert report["fixed_rate"]["accepted"] > 0
    durability = report["durability"]
    assert durability["adt_message_aa_rows"] == durability["aa_acks"]
    assert durability["result"] == "PASS"
    assert all(ms > 0 for ms in report["reference_ms"]) and "host speed" in lines[-2]


async def test_bench_enroll_smoke_with_late_events(database_url: str) -> None:
    """`wpc bench enroll` on a tiny county: in-order admissions and late backfilled visits, all applied."""
    rules = rules_of(EnrollmentSettings.model_construct())
    facility = next(f for f, spec in rules.site.facilities.items() if spec.participating)
    await load_county(_dsn(database_url), 200, 1000, facility)
    report = await replay_live(database_url, rules, 200, rate=200, duration=0.5, lanes=2, group_max=8,
                               facility=facility, late_share=0.3)
    assert report["events"] == 100 and 0 < report["late_events"] < 100
    conn = await asyncpg.connect(_dsn(database_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM processed_event") == 100
        assert await conn.fetchval("SELECT count(*) FROM encounter WHERE visit_number LIKE 'LATE%'") == \
            report["late_events"]
    finally:
        await conn.close()


@pytest.mark.timeout(180)
async def test_bench_import_smoke(broker: Broker, topics: dict[str, str], tmp_path: Path) -> None:
    """A tiny archive imported with the listener and the enrollment service running: every
    message stored, and every one processed by the enrollment service."""
    settings = ListenerSettings(
        database_url=ADMIN_DSN,  # the bench makes a database of its own on this server
        kafka_bootstrap_servers=broker.bootstrap,
        data_dir=tmp_path,
        topic_adt_events=topics["adt_events"],
        topic_adt_deadletter=topics["adt_deadletter"],
    )
    lines: list[str] = []
    report = await bench_import(ImportOptions(messages=300, batch=100, timeout_s=120), settings, out=lines.append)
    assert json.loads(lines[-1]) == report
    assert report["stored"]["accepted"] == 300
    assert report["end_to_end"]["complete"] and report["end_to_end"]["processed_events"] == 300
    assert all(ms > 0 for ms in report["reference_ms"]) and "host speed" in lines[-2]
