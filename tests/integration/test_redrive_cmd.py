"""`wpc redrive` as an operator runs it (a subprocess against the real PostgreSQL): it lists
what is parked, re-drives what a fix made applicable, keeps parked what still fails, and
says so in its exit status."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.handler import AdtEventHandler
from services.outbox import Outbox
from services.parking import Parking
from tests.integration.test_enrollment_batch import counts, record
from tests.integration.test_enrollment_store import NOW, stay
from tests.integration.test_parking import BrokenStore, engine, poisoned, rows

__all__ = ["engine"]  # the fixture, shared with test_parking

GROUP = "wpc-enrollment-cli"
ROOT = Path(__file__).resolve().parents[2]


async def wpc(database_url: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "WPC_DATABASE_URL": database_url, "WPC_ENROLLMENT_GROUP_ID": GROUP,
           "WPC_LOG_JSON": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wpc.cli", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_wpc_redrive_lists_redrives_the_fixed_and_keeps_the_broken(
    engine: AsyncEngine, database_url: str
) -> None:
    events = stay(1, days_ago=10) + stay(2, days_ago=5, mrn="MRN0002")
    events[3] = poisoned(events[3])  # still unstorable after the "fix"
    store = BrokenStore(events[1].control_id)  # a bug the deployed code no longer has
    handler = AdtEventHandler(engine, store, lanes=1, clock=lambda: NOW,
                              parking=Parking(engine, GROUP, "enrollment.deadletter", retry_delay_s=0,
                                              outbox=Outbox.of("enrollment", ["enrollment.deadletter"])))
    await handler([record(i, ev) for i, ev in enumerate(events)])
    assert (await counts(engine))["processed"] == 2
    fixable, broken = (r.id for r in await rows(engine, 'SELECT id FROM parked_event ORDER BY "offset"'))

    status, out = await wpc(database_url, "redrive", "--group", GROUP)
    assert status == 0, out
    listed = [line.split("\t") for line in out.splitlines() if line.startswith(tuple("0123456789"))]
    assert [(int(f[0]), f[1], f[3]) for f in listed] == [(fixable, GROUP, "KeyError"),
                                                        (broken, GROUP, "CharacterNotInRepertoireError")]
    assert (await counts(engine))["processed"] == 2  # listing re-drives nothing

    status, out = await wpc(database_url, "redrive", "--all", "--group", GROUP)
    assert status == 1, out  # one still fails
    assert f"{fixable}\t{GROUP}\tredriven" in out
    assert f"{broken}\t{GROUP}\tparked\tCharacterNotInRepertoireError" in out
    assert "SECRET-VISIT" not in out
    assert (await counts(engine))["processed"] == 3
    states = await rows(engine, 'SELECT status, redriven_by, attempts FROM parked_event ORDER BY "offset"')
    assert [(r.status, (r.redriven_by or "").startswith("cli:")) for r in states] == [("redriven", True),
                                                                                   ("parked", False)]
    assert states[1].attempts == 4

    status, out = await wpc(database_url, "redrive", "--id", str(fixable), "999999")
    assert status == 1 and f"{fixable}\t-\tnot parked" in out and "999999\t-\tnot parked" in out

    status, out = await wpc(database_url, "redrive", "--group", "nobody")
    assert status == 2 and "unknown consumer group" in out
