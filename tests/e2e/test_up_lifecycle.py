"""`wpc up` stops within its bound and leaves nothing behind, whatever ends it (issue 10
part 2): a SIGTERM or a terminal's Ctrl-C, a drain that does not finish, a second Ctrl-C,
a SIGKILL; and the next `wpc up` on the same data directory stops what a killed run left.

Each test starts a real `wpc up` (embedded PostgreSQL and Tansu) on one data directory
shared by the module, so only the first pays for initdb."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.synthetic import synthetic_feed
from services import reaper
from services.embedded import RUN_FILE, read_run_state
from tests.e2e.helpers import ack_code, eventually
from tests.e2e.up_process import UpProcess, all_gone, command_of, descendants
from wpc.tools.send import MllpClient

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wpc-up")


@pytest.fixture
def up(data_dir: Path, tmp_path: Path) -> Iterator[list[UpProcess]]:
    """Runs made by the test: killed (with what they started) whatever the test did."""
    runs: list[UpProcess] = []
    yield runs
    for run in runs:
        run.cleanup()


def new_run(runs: list[UpProcess], data_dir: Path, tmp_path: Path, **env: str) -> UpProcess:
    run = UpProcess(data_dir, tmp_path, **env)
    runs.append(run)
    return run


async def send_some(run: UpProcess, n: int = 3) -> None:
    client = await MllpClient.connect("127.0.0.1", run.mllp_port)
    try:
        for message in synthetic_feed(n, seed=4242 + run.mllp_port):
            assert ack_code(await client.send(message)) in ("AA", "CA")
    finally:
        await client.close()


@pytest.mark.slow
async def test_ctrl_c_drains_stops_the_servers_and_clears_the_run_state(
    up: list[UpProcess], data_dir: Path, tmp_path: Path
) -> None:
    run = new_run(up, data_dir, tmp_path)
    state = await run.start()
    assert state["pid"] == run.pid and read_run_state(data_dir) == state
    assert set(state) == {"pid", "started_at", "database_url", "kafka_bootstrap_servers", "postgres", "broker",
                          "ports"}
    assert state["ports"] == {"mllp": run.mllp_port, "listener_http": run.http_port,
                              "enrollment_http": run.enrollment_port,
                              "notifier_http": int(run.env["WPC_NOTIFIER_HTTP_PORT"]),
                              "demo_inbox": int(run.env["WPC_DEMO_INBOX_PORT"])}
    assert state["kafka_bootstrap_servers"] == f"127.0.0.1:{state['broker']['port']}"
    await send_some(run)
    started = run.everything()
    assert state["broker"]["pid"] in started and state["postgres"]["pid"] in started
    # A terminal's Ctrl-C goes to the foreground process group: the broker must not be in it,
    # or it dies before the services have drained into it.
    assert reaper.pid_alive(state["broker"]["pid"])
    assert os.getpgid(state["broker"]["pid"]) != os.getpgid(run.pid)

    run.send(signal.SIGINT, group=True)
    assert await run.wait() == 0, run.output()[-2000:]
    assert "stopping:" in run.output() and "listener stopped" in run.output()
    await all_gone(started)
    assert not (data_dir / RUN_FILE).exists()


@pytest.mark.slow
async def test_second_ctrl_c_exits_at_once_and_still_stops_the_servers(
    up: list[UpProcess], data_dir: Path, tmp_path: Path
) -> None:
    run = new_run(up, data_dir, tmp_path)
    await run.start()
    started = run.everything()
    run.send(signal.SIGINT, group=True)
    # A person presses again once the first had an effect (two signals sent back to back
    # may also reach the process as one).
    await eventually(lambda: "stopping:" in run.output(), 10, "the first Ctrl-C was not taken")
    run.send(signal.SIGINT, group=True)
    assert await run.wait() == 128 + signal.SIGINT, run.output()[-2000:]
    assert "second SIGINT: exiting without finishing the drain" in run.output()
    await all_gone(started)
    assert read_run_state(data_dir) is None


@pytest.mark.slow
async def test_a_drain_past_the_bound_exits_anyway_saying_what_did_not_finish(
    up: list[UpProcess], data_dir: Path, tmp_path: Path
) -> None:
    """An HTTP request still in flight holds the listener's stop (uvicorn waits up to 10 s
    for it): with a bound of 2 s, `wpc up` exits at the bound, status 1, in one line naming
    what was being stopped."""
    run = new_run(up, data_dir, tmp_path, WPC_SHUTDOWN_TIMEOUT_S="2")
    await run.start()
    started = run.everything()
    _reader, writer = await asyncio.open_connection("127.0.0.1", run.http_port)
    writer.write(b"POST /v1/adt HTTP/1.1\r\nHost: x\r\nContent-Type: application/hl7-v2\r\n"
                 b"Content-Length: 1000\r\n\r\nMSH|")  # the rest of the body never comes
    await writer.drain()
    await asyncio.sleep(0.2)
    run.send(signal.SIGTERM)
    assert await run.wait() == 1, run.output()[-2000:]
    said = [line for line in run.output().splitlines() if "did not finish within 2 s" in line]
    assert len(said) == 1 and re.match(r"wpc up: stopping the [a-zA-Z ]+ did not finish", said[0]), said
    await all_gone(started)
    writer.close()


@pytest.mark.slow
async def test_sigkill_leaves_nothing_and_the_next_up_stops_a_stale_postgres(
    up: list[UpProcess], data_dir: Path, tmp_path: Path
) -> None:
    # 1. wpc up alone is killed: its guard stops PostgreSQL and Tansu, its workers follow it.
    first = new_run(up, data_dir, tmp_path)
    await first.start()
    await send_some(first)  # the listener's worker processes start on first use
    await eventually(lambda: sum("multiprocessing" in command_of(p) for p in descendants(first.pid)) >= 2, 30,
                     "worker processes did not start")
    started = first.everything()
    first.send(signal.SIGKILL)
    await first.wait()
    await all_gone(started)

    # 2. Killed with its guard (everything but the daemonized PostgreSQL dies with it).
    second = new_run(up, data_dir, tmp_path)
    state = await second.start()
    guard = next(p for p in descendants(second.pid) if "services.reaper" in command_of(p))
    stale_pg = state["postgres"]["pid"]
    others = second.everything() - {stale_pg} - descendants(stale_pg)
    reaper.stop_process(guard, ((signal.SIGKILL, 2.0),))
    second.send(signal.SIGKILL)
    await second.wait()
    await all_gone(others)
    assert reaper.pid_alive(stale_pg)  # what the issue saw: later runs reused it and never stopped it

    # 3. The next run stops it (saying so), starts its own, and stops that one too.
    third = new_run(up, data_dir, tmp_path)
    state = await third.start()
    assert f"stopped the embedded PostgreSQL (pid {stale_pg}) left running" in third.output()
    assert not reaper.pid_alive(stale_pg) and state["postgres"]["pid"] != stale_pg
    await send_some(third)
    started = third.everything()
    third.send(signal.SIGTERM)
    assert await third.wait() == 0
    await all_gone(started)
