"""Process lifecycle shared by every command: the event loop and the stop signal.

One lifespan per service (style.md): a command builds its services as async contexts,
waits on `stop_on_signals()`, and leaving the contexts is the drain.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


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
