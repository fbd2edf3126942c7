"""Shared fixtures: the real PostgreSQL on 127.0.0.1:5432 and a real Tansu broker.

Isolation: the session migrates one template database; every test that asks for
`database_url` gets its own database cloned from it (CREATE DATABASE ... TEMPLATE), and
every test that asks for `topics` gets topic names no other test uses.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from services.db import create_engine, migrate
from services.embedded import EmbeddedBroker

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
ADMIN_DSN = os.environ.get("WPC_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    assert SAMPLES.is_dir(), f"sample corpus not found at {SAMPLES}"
    return SAMPLES


@pytest.fixture(scope="session")
async def template_db() -> AsyncIterator[str]:
    name = f"wpc_tmpl_{os.getpid()}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(_url(name))
    await migrate(engine)
    await engine.dispose()
    yield name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def _url(db: str) -> str:
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{db}"


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = f"wpc_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    try:
        yield _url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Broker(EmbeddedBroker):
    """The embedded Tansu on a free loopback port; stop()/start() simulate an outage.

    Tansu here keeps topics in memory, so a restart loses what it held: tests that
    restart it check that the outbox re-publishes, not that the broker kept data.
    """

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers

    def stop(self) -> None:
        # An outage, not a goodbye: Tansu may take long to close connected clients on SIGTERM.
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    b = Broker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topics() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {"adt_events": f"adt.events.{suffix}", "adt_deadletter": f"adt.deadletter.{suffix}"}


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A broker of this test alone, for tests that stop and restart it."""
    b = Broker()
    b.start()
    yield b
    b.stop()
