"""Process lifecycle shared by every command: the event loop, the stop signal, the bound.

One lifespan per service (style.md): a command builds its services as async contexts,
waits on the stop event, and leaving the contexts is the drain.

Stopping always ends (`Shutdown`):

- the first SIGINT / SIGTERM sets the stop event: the services drain;
- from then on the drain has ``WPC_SHUTDOWN_TIMEOUT_S`` (20 s): past it, the process
  says in one line what had not finished, runs its emergency steps (`Shutdown.at_exit`:
  `wpc up` stops its embedded servers there) and exits with status 1;
- a second SIGINT / SIGTERM does the same at once (status 128 + signal).

The deadline runs on a thread of its own, not on the event loop: a drain stuck in a
blocking call (or a loop that never gets control back) must not stop the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import uvloop

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_DRAIN_TIMEOUT = 1


# --- the loops of background work: one way to pause, back off and stop ------------------------


@dataclass
class Backoff:
    """The waits after failures in a row: ``first``, doubling up to ``cap``, each with up to
    ``jitter`` times itself added at random (replicas that failed together do not all come
    back at the same instant); `reset` after a success."""

    first: float
    cap: float
    jitter: float = 0.0
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.first

    def reset(self) -> None:
        self.current = self.first

    def next(self) -> float:
        """The wait before the next try; the one after it doubles."""
        wait = self.current + (random.uniform(0, self.current * self.jitter) if self.jitter else 0.0)
        self.current = min(self.cap, self.current * 2)
        return wait


async def pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Wait ``seconds``, or less when ``stop`` (or ``wake``) is set meanwhile."""
    if seconds <= 0:
        return
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def repeat(
    stop: asyncio.Event, step: Callable[[], Awaitable[float]], *, what: str, backoff: Backoff,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``step`` until ``stop`` is set; it returns how long to wait before the next round
    (0: at once; ``wake`` cuts the wait short). A round that raises is logged by its exception
    class only, never its text (it may quote data), and the next waits out ``backoff``: a
    background loop (a relay, a worker, a sweep) never takes its service down."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # before the round: what is signalled from now on starts the next
        try:
            delay = await step()
        except Exception as exc:
            delay = backoff.next()
            log.warning("%s failed: %s; again in %.1fs", what, type(exc).__name__, delay)
        else:
            backoff.reset()
        await pause(stop, delay, wake)


async def every(stop: asyncio.Event, interval_s: float, step: Callable[[], Awaitable[object]], what: str) -> None:
    """`repeat` ``step`` every ``interval_s`` seconds, failed or not (a periodic chore)."""

    async def timed() -> float:
        await step()
        return interval_s

    await repeat(stop, timed, what=what, backoff=Backoff(interval_s, interval_s))


async def until_stopped(stop: asyncio.Event, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``work`` unless ``stop`` is set first, in which case ``work`` is cancelled.
    Returns (finished, result). For calls that may wait without bound on a peer (a Kafka
    consumer's start waits for its group assignment for as long as it takes)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's main coroutine on uvloop (a pinned dependency)."""
    return uvloop.run(coro)


# CPython starts a young collection every 700 container objects made and not yet freed. A
# consumer batch keeps thousands alive until its commit (decoded events, rows, facts), so the
# collector kept walking what the batch still held: the notifier, fed 10,000 adt.events in
# batches of 200, ran 551 young and 50 middle collections, 24-32 us of CPU an event of its
# 150-165 (timed with gc.callbacks, three runs); at one every 50,000 it ran none and took
# 121-135 us an event. Where objects die young it changes nothing: the enrollment service's
# per-event path (`wpc bench enroll`) spent ~2 us an event in 20 collections at 700, and the
# derivation worker none at either. Reference counting still frees everything acyclic at
# once; cyclic garbage waits for at most that many objects (a few MB).
GC_YOUNG_THRESHOLD = 50_000


def collect_less_often() -> None:
    """A young collection every `GC_YOUNG_THRESHOLD` objects instead of every 700 (the older
    generations' thresholds stay). For service processes and their workers."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def freeze_heap() -> None:
    """Take what start-up built out of the cyclic garbage collector's sight (`gc.freeze`),
    and collect less often from then on (`collect_less_often`).

    Why: a full collection walks every tracked object, and a service's are mostly what
    start-up made and keeps to the end (imported modules, the app and its routes, the
    engine, the rules). At full scale the enrollment service's full collections stalled
    every lane for 104-156 ms, more than the whole p99 goal; frozen, a full collection
    walks only what serving made since. Garbage is collected first, so nothing dead is
    kept; frozen objects are still freed by reference counting when let go.
    """
    gc.collect()
    gc.freeze()
    collect_less_often()

def run_interruptible(main: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``main()`` on uvloop; SIGINT / SIGTERM cancel it, which unwinds every ``finally``
    (the benchmarks' child processes, embedded servers). None when it was interrupted."""

    async def cancellable() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await main()

    try:
        return uvloop.run(cancellable())
    except asyncio.CancelledError:
        return None


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, without a bound (the bench's helper processes,
    which their parent stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


class Shutdown:
    """The stop event of a command, and the bound on how long stopping may take."""

    def __init__(self, command: str, timeout_s: float) -> None:
        self.command = command
        self.timeout_s = timeout_s
        self.stop = asyncio.Event()
        self.stage = ""  # what is being stopped now, for the message if it does not finish
        self._signals = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._emergency: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> asyncio.Event:
        """Take over SIGINT and SIGTERM (call first thing in the main coroutine, so that a
        signal during start-up counts too)."""
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        return self.stop

    def at_exit(self, step: Callable[[], None]) -> Callable[[], None]:
        """Register a step for a forced exit (blocking, quick, bounded); the last registered
        runs first. Returns a function that unregisters it."""
        self._emergency.append(step)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._emergency.remove(step)

        return remove

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop.set()
            self.arm()
        else:
            name = signal.Signals(sig).name
            self.force(f"second {name}: exiting without finishing the drain", 128 + sig)

    def arm(self) -> None:
        """Start the clock (once): past ``timeout_s`` the process exits whatever is left."""
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.timeout_s, self._expired)
                self._timer.daemon = True  # also runs while the interpreter waits for threads at exit
                self._timer.start()

    def _expired(self) -> None:
        stage = f"{self.stage} " if self.stage else "the drain "
        pending = self._pending_tasks()
        still = f" (still running: {', '.join(pending)})" if pending else ""
        self.force(f"{stage}did not finish within {self.timeout_s:g} s{still}; exiting anyway", EXIT_DRAIN_TIMEOUT)

    def _pending_tasks(self) -> list[str]:
        """Named tasks not yet done (read from another thread: best effort, for a message)."""
        if self._loop is None:
            return []
        try:
            tasks = asyncio.all_tasks(self._loop)
        except RuntimeError:
            return []
        names = sorted({t.get_name() for t in tasks if not t.done() and not t.get_name().startswith("Task-")})
        return names[:8]

    def force(self, reason: str, code: int) -> NoReturn:
        """Say why, run the emergency steps, exit ``code`` (from any thread)."""
        with self._lock:  # one forced exit, even if the deadline and a signal race
            print(f"wpc {self.command}: {reason}", file=sys.stderr, flush=True)
            for step in reversed(self._emergency):
                try:
                    step()
                except Exception as exc:  # the next step must still run
                    print(f"wpc {self.command}: emergency stop step failed: {type(exc).__name__}", file=sys.stderr)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def run_until_stopped(
    command: str, main: Callable[[Shutdown], Coroutine[Any, Any, None]], timeout_s: float
) -> int:
    """Run ``main(shutdown)`` on uvloop; stopping, whether by signal or by an error, is
    bounded by ``timeout_s``."""
    shutdown = Shutdown(command, timeout_s)
    try:
        uvloop.run(main(shutdown))
    finally:
        # After an error too: what is left of the stop (thread joins at exit) gets the bound.
        shutdown.arm()
    return 0

