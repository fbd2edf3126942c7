"""`wpc bench pipeline` end to end, very short, against the test PostgreSQL and broker: the
figures are printed, not asserted.

What is asserted: the last line is the JSON report; every probe admission sent reached the
care team's webhook receiver as a candidate, and the enrollment service applied every
message the listener accepted.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from adt_listener.settings import ListenerSettings
from bench.pipeline import PipelineOptions, pipeline
from tests.conftest import ADMIN_DSN, Broker


@pytest.mark.timeout(240)
async def test_bench_pipeline_smoke(broker: Broker, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"{name.removeprefix('topic_').replace('_', '.')}.{suffix}"
              for name in ListenerSettings.model_fields if name.startswith("topic_")}
    settings = ListenerSettings(
        database_url=ADMIN_DSN,  # the bench runs in a database of its own there, dropped at the end
        kafka_bootstrap_servers=broker.bootstrap,
        data_dir=tmp_path,
        enrollment_group_id=f"wpc-enrollment-{suffix}",
        notifier_group_id=f"wpc-notifier-{suffix}",
        **topics,
    )
    lines: list[str] = []
    options = PipelineOptions(rates=(0.0,), duration=1.0, probe_interval=0.5)

    report = await pipeline(options, settings, out=lines.append)

    assert json.loads(lines[-1]) == report
    (phase,) = report["phases"]
    assert phase["probes"] == 2 and phase["delivered"] == 2
    assert all(ms > 0 for ms in report["reference_ms"]) and "host speed" in lines[-2]
    assert phase["caught_up"] and phase["errors"] == 0
    assert set(phase["cpu_ms_per_event"]) >= {"listener", "derivation", "enrollment", "notifier", "postgresql"}
