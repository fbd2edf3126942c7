"""Statements on the asyncpg connection beneath SQLAlchemy: the enrollment store's driver.

Why not SQLAlchemy's async layer: on this path every event is a handful of short
statements, and the layer's per-statement Python (compiling, the greenlet hop, result
wrapping) cost 0.3–0.5 ms each against ~0.1 ms for asyncpg's own round trip. The store
keeps SQLAlchemy's engine, pool and transactions (callers still hand it an
`AsyncConnection`), and runs its statements on the driver connection underneath, in the
same transaction. asyncpg prepares each statement once per connection (its statement
cache), so a hot statement is parsed and planned once, not once per event.

Statements keep SQLAlchemy's ``:name`` parameters, translated once per statement text
to asyncpg's ``$n`` (``x::t`` casts and ``12:30`` are left alone; a ``:word`` inside a
string literal is not, so values go in as parameters, never as literals).

Values come back as asyncpg decodes them on a connection SQLAlchemy opened: json and
jsonb as Python objects (the dialect's codecs), arrays as lists, rows as `asyncpg.Record`.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

# The one way to the asyncpg connection (re-exported: the handler takes it from here).
from services.db import driver_connection

__all__ = ["Sql", "driver_connection"]

# The setting before, then the new one (a select list is evaluated in order).
_PLAN_PER_CALL = (
    "SELECT current_setting('plan_cache_mode'), set_config('plan_cache_mode', 'force_custom_plan', true)"
)

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Params = Mapping[str, Any]


@functools.lru_cache(maxsize=512)
def _positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` → ``$n`` (a name used twice is one parameter); the names in ``$n`` order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, statement), tuple(names)


class Sql:
    """One asyncpg connection, spoken to with named parameters."""

    __slots__ = ("driver",)

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    @classmethod
    async def of(cls, conn: AsyncConnection | Sql) -> Sql:
        """The store's view of a caller's connection, inside the caller's transaction.

        SQLAlchemy sends BEGIN lazily, with its first statement; one statement through it
        makes the transaction real before anything runs on the driver underneath, else
        those statements would each commit on their own.
        """
        if isinstance(conn, Sql):
            return conn
        driver = await driver_connection(conn)
        if not driver.is_in_transaction():
            await conn.exec_driver_sql("SELECT 1")
        return cls(driver)

    @staticmethod
    def _args(statement: str, params: Params | None) -> tuple[str, list[Any]]:
        query, names = _positional(statement)
        return query, [params[n] for n in names] if params else []

    async def fetch(self, statement: str, params: Params | None = None) -> list[Any]:
        query, args = self._args(statement, params)
        return list(await self.driver.fetch(query, *args))

    @contextlib.asynccontextmanager
    async def planned_per_call(self) -> AsyncIterator[None]:
        """The statements inside are planned for their parameters on each call, in the caller's
        transaction (SET LOCAL, then back to the setting before): for statements over a whole
        batch's keys (``= ANY(:keys)``, ``JOIN unnest(...)``), run once per batch.

        A generic plan assumes an array of 10 elements and the table's size when it was made.
        Made while a table was small (a new database, the first minutes of an import), it
        scans the table and compares every row with every key, and it stays cached on the
        connection until an ANALYZE: seen at 8-15 ms a statement on 200 keys and 5,000
        identities, where the index takes a fraction of a millisecond. Planning once per
        batch costs less."""
        was = await self.driver.fetchval(_PLAN_PER_CALL)
        restore = "SELECT set_config('plan_cache_mode', $1, true)"
        try:
            yield
        except BaseException:
            # A failed statement has aborted the transaction (the caller's rollback undoes the
            # SET LOCAL anyway): the caller's error is the one to see, not this one's.
            with contextlib.suppress(Exception):
                await self.driver.execute(restore, was)
            raise
        await self.driver.execute(restore, was)

    async def row(self, statement: str, params: Params | None = None) -> Any:
        """The first row, or None."""
        query, args = self._args(statement, params)
        return await self.driver.fetchrow(query, *args)

    async def one(self, statement: str, params: Params | None = None) -> Any:
        """The only row: a statement that returns none is a bug here, not a lookup miss."""
        row = await self.row(statement, params)
        if row is None:
            raise LookupError("statement returned no row")
        return row

    async def scalar(self, statement: str, params: Params | None = None) -> Any:
        query, args = self._args(statement, params)
        return await self.driver.fetchval(query, *args)

    async def execute(self, statement: str, params: Params | None = None) -> None:
        query, args = self._args(statement, params)
        await self.driver.execute(query, *args)

    async def execute_many(self, statement: str, rows: Sequence[Params]) -> None:
        """One statement for each of ``rows``, pipelined: one round trip, not one per row."""
        if rows:
            query, names = _positional(statement)
            await self.driver.executemany(query, [[row[n] for n in names] for row in rows])
