"""A real `wpc up` in a subprocess (embedded PostgreSQL and Tansu), for the tests of how
it stops, crashes and starts again. It runs in its own process group, as under a
terminal, so that a Ctrl-C can be sent the way a terminal sends it (to the group)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from services import reaper
from services.embedded import RUN_FILE, free_port
from tests.e2e.helpers import eventually

STARTUP_S = 120.0  # initdb on a fresh data directory, under a loaded machine


def quiet_port() -> int:
    """A free port below the ephemeral range: the port of an outgoing connection (Kafka,
    PostgreSQL clients) cannot take it between now and the moment `wpc up` binds it, as it
    can one that `free_port` (the kernel's ephemeral choice) returned."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class UpProcess:
    def __init__(self, data_dir: Path, log_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_dir / f"wpc-up-{os.urandom(3).hex()}.log"
        self.env = {
            **os.environ,
            "WPC_DATA_DIR": str(data_dir),
            "WPC_DATABASE_URL": "",
            "WPC_KAFKA_BOOTSTRAP_SERVERS": "",
            "WPC_MLLP_HOST": "127.0.0.1",
            "WPC_HTTP_HOST": "127.0.0.1",
            "WPC_MLLP_PORT": str(quiet_port()),
            "WPC_LISTENER_HTTP_PORT": str(quiet_port()),
            "WPC_ENROLLMENT_HTTP_PORT": str(quiet_port()),
            "WPC_NOTIFIER_HTTP_PORT": str(quiet_port()),
            "WPC_DEMO_INBOX_PORT": str(quiet_port()),
            "WPC_WEB_PORT": str(quiet_port()),
            "WPC_LOG_JSON": "false",
            "WPC_RELAY_POLL_INTERVAL_S": "0.05",
            **env,
        }
        self.mllp_port = int(self.env["WPC_MLLP_PORT"])
        self.http_port = int(self.env["WPC_LISTENER_HTTP_PORT"])
        self.enrollment_port = int(self.env["WPC_ENROLLMENT_HTTP_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> dict[str, Any]:
        """Start and wait until it serves; return its run state (run.json)."""
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (instant; we poll below)
                [sys.executable, "-m", "wpc.cli", "up"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                process_group=0,
            )
        await eventually(lambda: "Ctrl-C stops." in self.output() or self.proc is None or
                         self.proc.poll() is not None, STARTUP_S, "wpc up did not come up")
        assert self.proc.poll() is None, self.output()[-3000:]
        return self.run_state()

    def run_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.data_dir / RUN_FILE).read_text())
        return state

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def everything(self) -> set[int]:
        """Every process this run started: its descendants and the daemonized PostgreSQL."""
        pids = descendants(self.pid)
        pg = (self.run_state().get("postgres") or {}).get("pid")
        if pg:
            pids.add(int(pg))
            pids |= descendants(int(pg))
        return pids

    def send(self, sig: int, *, group: bool = False) -> None:
        if group:
            os.killpg(self.pid, sig)  # as a terminal's Ctrl-C
        else:
            os.kill(self.pid, sig)

    async def wait(self, timeout_s: float = 60.0) -> int:
        proc = self.proc
        assert proc is not None
        await eventually(lambda: proc.poll() is not None, timeout_s, "wpc up did not exit")
        self.returncode = proc.returncode
        self.proc = None
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        """After a test (failed or not): nothing of this run may stay."""
        leftovers = set()
        if self.proc is not None:
            leftovers = descendants(self.proc.pid)
            self.kill()
        for pid in leftovers:
            reaper.stop_process(pid, ((signal.SIGKILL, 2.0),))


async def all_gone(pids: set[int], timeout_s: float = 30.0) -> None:
    await eventually(lambda: not any(reaper.pid_alive(p) for p in pids), timeout_s,
                     f"left running: {[(p, command_of(p)) for p in pids if reaper.pid_alive(p)]}", interval_s=0.1)

