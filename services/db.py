"""PostgreSQL access: one async SQLAlchemy engine per process, and schema migrations.

The engine is created by the composition root and handed down; nothing connects at
import time. Migrations are Alembic revisions under services/migrations, applied by
`wpc migrate` and at the start of `wpc up`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Serializes concurrent `wpc migrate` runs (two replicas starting at once).
_MIGRATION_LOCK_ID = 0x57504301


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and point them at the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


# Settings of every session the services open. ``jit``: PostgreSQL compiles a statement's
# expressions with LLVM when its estimated cost passes ``jit_above_cost``, which a statement
# over a batch's keys does on a misestimate (seen: 9-17 ms of compiling for a 2 ms lookup of
# 226 encounters). The services run short statements only; a server without JIT (the
# embedded one) ignores the setting.
SESSION_SETTINGS = {"jit": "off"}


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"server_settings": SESSION_SETTINGS},
    )


def _upgrade(connection: Connection) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent, safe to run concurrently)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    """(the database's Alembic revision or None, the newest revision of this code)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(config).get_current_head()


async def schema_revisions(url: str) -> tuple[str | None, str | None]:
    """`_revisions` of the database at ``url`` (raises when it cannot be reached)."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_revisions)
    finally:
        await engine.dispose()


async def migrate_url(url: str) -> None:
    """`migrate` on a short-lived engine of its own (commands that only migrate, then go on)."""
    engine = create_engine(url, pool_size=1)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers; raises otherwise (a readiness check counts that as failing)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return True


async def driver_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one (no transaction is begun): the hot paths
    (the relays, the listener's store, the enrollment handler) speak plain statements to
    it, with no SQLAlchemy work per row. The one way to reach it; `get_raw_connection` runs
    through a greenlet, so a caller on a hot path keeps what it got."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _admin(url: str, database: str, statement: str) -> None:
    """Run one statement that must not be in a transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(make_url(normalize_url(url)).set(database=database), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def create_scratch_database(url: str, prefix: str) -> tuple[str, str]:
    """A fresh database beside the one ``url`` names (benchmarks); returns (its URL, its name)."""
    base = make_url(normalize_url(url))
    name = f"{prefix}_{secrets.token_hex(6)}"
    await _admin(url, base.database or "postgres", f'CREATE DATABASE "{name}"')
    return base.set(database=name).render_as_string(hide_password=False), name


async def drop_database(url: str, name: str) -> None:
    await _admin(url, "postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
