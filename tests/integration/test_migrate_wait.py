"""`wpc migrate --wait` (the Deployments' init container) against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import asyncpg

from services.db import migrate_url
from tests.conftest import ADMIN_DSN
from wpc.migrate_cmd import wait_for_head


async def test_waits_until_the_schema_is_at_head_and_times_out_on_an_old_one() -> None:
    name = f"wpc_wait_{uuid.uuid4().hex[:10]}"
    url = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        # An empty database: --wait gives up after its timeout and says what it saw.
        ready, seen = await wait_for_head(url, timeout_s=0.3, interval_s=0.1)
        assert not ready and "no revision" in seen
        # Migrated while somebody waits (the Job running beside the init container).
        waiting = asyncio.create_task(wait_for_head(url, timeout_s=30, interval_s=0.1))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await migrate_url(url)
        ready, seen = await asyncio.wait_for(waiting, 10)
        assert ready, seen
        # The command itself: exit 0 at head, 1 on an unreachable database after --timeout.
        ok = subprocess.run(  # noqa: ASYNC221 (a short command; nothing else runs meanwhile)
            [sys.executable, "-m", "wpc.cli", "migrate", "--wait", "--timeout", "5", "--database-url", url],
            capture_output=True, text=True, timeout=60,
        )
        assert ok.returncode == 0 and "schema at" in ok.stdout, ok.stdout + ok.stderr
        bad = subprocess.run(  # noqa: ASYNC221
            [sys.executable, "-m", "wpc.cli", "migrate", "--wait", "--timeout", "1",
             "--database-url", "postgresql://postgres@127.0.0.1:1/none"],
            capture_output=True, text=True, timeout=60,
        )
        assert bad.returncode == 1 and "not reachable" in bad.stdout, bad.stdout + bad.stderr
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
