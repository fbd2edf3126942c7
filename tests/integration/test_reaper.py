"""Children that end with their parent (services.reaper) and the run state of `wpc up`
(services.embedded), with real processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import reaper
from services.embedded import DataDirInUse, RunState, clear_run_state, read_run_state, reclaim
from services.lifecycle import until_stopped
from tests.e2e.helpers import eventually


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def sleeper(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["sleep", "600"])
    procs.append(p)
    return p


async def test_guard_stops_what_it_watches_once_its_parent_is_gone(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    """End of file on the guard's pipe is how it learns its parent died (any way): it then
    stops the watched processes, and leaves alone what it was told to forget."""
    watched, forgotten = sleeper(sleepers), sleeper(sleepers)
    guard = reaper.Guard()
    guard.start()
    guard.watch(watched.pid, ((signal.SIGTERM, 2.0),))
    guard.watch(forgotten.pid)
    guard.forget(forgotten.pid)
    await asyncio.sleep(0.3)
    assert watched.poll() is None  # nothing happens while the parent lives
    assert guard._proc is not None and guard._proc.stdin is not None
    guard._proc.stdin.close()  # what the kernel does when the parent dies
    await eventually(lambda: watched.poll() is not None, 10, "watched process not stopped")
    assert watched.returncode == -signal.SIGTERM
    assert forgotten.poll() is None
    guard._proc.wait(10)


async def test_guard_never_signals_a_process_that_reuses_a_watched_pid(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    other = sleeper(sleepers)
    watched: dict[int, reaper.Watched] = {}
    # The pid of a watched process that died, now another process's: its start time differs.
    reaper.parse_command(f"watch {other.pid} {time.time() - 3600} 15:1.0", watched)
    assert watched[other.pid].steps == ((signal.SIGTERM, 1.0),)
    assert reaper.stop_process(other.pid, watched[other.pid].steps, started=watched[other.pid].started)
    assert other.poll() is None  # "gone" as far as the guard is concerned, and untouched


_ORPHAN = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from services.reaper import die_with_parent

def pid():
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(pool.submit(pid).result()))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
"""


async def test_a_pool_worker_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script, told = tmp_path / "orphan.py", tmp_path / "worker.pid"
    script.write_text(_ORPHAN)
    parent = await asyncio.create_subprocess_exec(sys.executable, str(script), str(told))
    try:
        await eventually(told.exists, 30, "no worker started")
        worker = int(told.read_text())
        assert reaper.pid_alive(worker)
        parent.kill()
        await parent.wait()
        await eventually(lambda: not reaper.pid_alive(worker), 10, "worker outlived its parent")
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


def test_run_state_is_read_only_while_its_writer_lives(tmp_path: Path) -> None:
    assert read_run_state(tmp_path) is None  # none written
    mine = RunState(os.getpid(), dt.datetime.now(dt.UTC), "postgresql+asyncpg://x", "127.0.0.1:1",
                    ports={"mllp": 1, "listener_http": 2, "enrollment_http": 3, "notifier_http": 4, "demo_inbox": None})
    mine.write(tmp_path)
    state = read_run_state(tmp_path)
    assert state == json.loads((tmp_path / "run.json").read_text())
    assert state is not None and state["pid"] == os.getpid() and state["postgres"] is None
    assert (tmp_path / "run.json").stat().st_mode & 0o077 == 0  # may hold a database password
    with pytest.raises(DataDirInUse):
        reclaim(tmp_path)

    # Our pid, but written before this process started: a dead run whose pid was reused.
    old = {**state, "started_at": "2001-01-01T00:00:00+00:00"}
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert read_run_state(tmp_path) is None
    # A dead pid.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "run.json").write_text(json.dumps({**state, "pid": dead.pid}))
    assert read_run_state(tmp_path) is None
    assert reclaim(tmp_path) == [] and not (tmp_path / "run.json").exists()  # nothing was left running

    mine.write(tmp_path)
    clear_run_state(tmp_path)
    assert not (tmp_path / "run.json").exists()


async def test_until_stopped_gives_up_on_work_that_waits_for_ever() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    waiting = asyncio.create_task(until_stopped(stop, forever()))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    stop.set()
    assert await waiting == (False, None)
    assert cancelled.is_set()
    assert await until_stopped(asyncio.Event(), asyncio.sleep(0, "done")) == (True, "done")
