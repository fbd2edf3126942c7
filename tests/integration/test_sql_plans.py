"""Sessions of the services: statements over a batch's keys planned for their parameters
(`Sql.planned_per_call`, in the caller's transaction, the setting put back as it was), and
no JIT compiling."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from enrollment_svc.sql import Sql, driver_connection
from services.db import create_engine

pytestmark = pytest.mark.asyncio

_MODE = "SELECT current_setting('plan_cache_mode')"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Sql]:
    """A service session (`services.db.create_engine`), spoken to as the enrollment store does."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            yield Sql(await driver_connection(conn))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("before", ["force_generic_plan", "auto"])
async def test_planned_per_call_sets_custom_plans_inside_and_restores_the_setting(db: Sql, before: str) -> None:
    await db.driver.execute(f"BEGIN; SET LOCAL plan_cache_mode = {before}")
    async with db.planned_per_call():
        assert await db.scalar(_MODE) == "force_custom_plan"
    assert await db.scalar(_MODE) == before
    await db.driver.execute("ROLLBACK")
    # SET LOCAL: nothing outlives the transaction on the pooled connection.
    assert await db.scalar(_MODE) == "auto"


async def test_planned_per_call_restores_the_setting_when_the_caller_fails(db: Sql) -> None:
    await db.driver.execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
    with pytest.raises(ValueError):
        async with db.planned_per_call():
            raise ValueError("a failure of the caller's")
    assert await db.scalar(_MODE) == "force_generic_plan"
    await db.driver.execute("ROLLBACK")


async def test_service_sessions_run_without_jit(db: Sql) -> None:
    """The server's default (on, where it has LLVM) compiled a 2 ms batch lookup for 9-17 ms."""
    assert await db.scalar("SHOW jit") == "off"


async def test_planned_per_call_lets_the_failed_statement_s_error_through(db: Sql) -> None:
    """After a statement fails the transaction takes no command but ROLLBACK: putting the
    setting back fails too, and must not hide why."""
    import asyncpg

    await db.driver.execute("BEGIN")
    with pytest.raises(asyncpg.UndefinedTableError):
        async with db.planned_per_call():
            await db.fetch("SELECT * FROM no_such_table")
    await db.driver.execute("ROLLBACK")
    assert await db.scalar(_MODE) == "auto"

