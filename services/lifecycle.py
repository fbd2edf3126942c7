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
from typing import Any, TypeVar

import uvloop

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
