"""Reading ACKs and the database back in end-to-end tests, and waiting for a condition."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

import asyncpg

from services.db import normalize_url


async def eventually(
    check: Callable[[], object], timeout_s: float = 3.0, what: str = "condition", interval_s: float = 0.01
) -> None:
    """Poll ``check`` (a plain or an async predicate) until it is true; fail with ``what``
    once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(interval_s)


def ack_fields(ack: bytes) -> dict[str, list[str]]:
    """Segment id → fields of its first occurrence (MSA, MSH...), plus 'ERR*' for all ERR segments."""
    text = ack.decode("latin-1")
    sep = text[3]
    out: dict[str, list[str]] = {}
    errs: list[str] = []
    for seg in filter(None, text.split("\r")):
        fields = seg.split(sep)
        out.setdefault(fields[0], fields)
        if fields[0] == "ERR":
            errs.append(seg)
    out["ERR*"] = errs
    return out


def ack_code(ack: bytes) -> str:
    return ack_fields(ack)["MSA"][1]


def msa_control_id(ack: bytes) -> str:
    return ack_fields(ack)["MSA"][2]


def control_id(message: bytes) -> str:
    first = message.split(b"\r", 1)[0].decode("latin-1")
    return first.split(first[3])[9]


async def db_fetch(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    dsn = normalize_url(database_url).replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# What is still to be published: the shared outbox and the listener's adt.events queue.
UNPUBLISHED = "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM adt_event_queue) AS n"


async def wait_outbox_empty(database_url: str, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        rows = await db_fetch(database_url, UNPUBLISHED)
        if rows[0]["n"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("outbox did not drain")
