"""Process lifecycle shared by every command: the event loop and the stop signal.

One lifespan per service (style.md): a command builds its services as async contexts,
waits on `stop_on_signals()`, and leaving the contexts is the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import uvloop

from services import db, logs, preflight
from services.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


async def every(stop: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``step`` every ``interval_s`` seconds until ``stop`` is set. A failing round (the
    database away, say) is logged by its exception class only, never its text (it may quote
    data), and tried again next round: a background chore never takes its service down."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            log.warning("%s failed: %s", what, type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's main coroutine on uvloop (a pinned dependency)."""
    return uvloop.run(coro)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; call it first, so a signal during start-up counts too."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def serve_one(
    command: str, service: Callable[[Settings], AbstractAsyncContextManager[object]], *, migrate: bool
) -> int:
    """`wpc listener` / `wpc enrollment` / `wpc notifier`: one service against configured PostgreSQL and Kafka,
    until SIGINT/SIGTERM (then the service's own drain). Exit status 2 when unconfigured."""
    settings = preflight.checked_settings(command)  # one line per mistake, before anything starts
    logs.configure(settings.log_level, settings.log_json)
    if not settings.database_url or not settings.kafka_bootstrap_servers:
        print(f"wpc {command}: set WPC_DATABASE_URL and WPC_KAFKA_BOOTSTRAP_SERVERS (or use `wpc up`)")
        return 2

    async def main() -> None:
        stop = stop_on_signals()
        if migrate:
            await db.migrate_url(settings.database_url)
        async with service(settings):
            await stop.wait()
            log.info("signal received: draining")

    run(main())
    return 0
