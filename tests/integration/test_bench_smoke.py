"""`wpc bench ingest` end to end, very short: the figures are printed, not asserted.

What is asserted: the last line is the JSON report, every target accepted messages,
and every AA our listener sent is a row in adt_message (custody before the ACK).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from adt_listener.settings import ListenerSettings
from bench.ingest import IngestOptions, ingest
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
    for target in ("ours", "peer", "bare"):
        assert report["targets"][target]["accepted"] > 0, target
    assert report["fixed_rate"]["accepted"] > 0
    durability = report["durability"]
    assert durability["adt_message_aa_rows"] == durability["aa_acks"]
    assert durability["result"] == "PASS"
