"""Finding a running `wpc up` from another shell: ``<WPC_DATA_DIR>/run.json``.

`wpc up` writes the file when it is up (pid, start time, the database URL and broker of
its embedded servers, its ports) and removes it when it stops. The tools (`wpc
feed-report`, `wpc replay`, `wpc load-roster`, `wpc migrate`, `wpc send`) read it when
nothing is configured, so a newcomer who started `wpc up` needs no URL to use them.

A file whose process is gone (a crash, a SIGKILL) is ignored.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.configfile import ConfigError
from services.embedded import RUN_FILE, read_run_state

__all__ = ["RunInfo", "read_run_info", "run_file", "tool_database_url"]


@dataclass(frozen=True)
class RunInfo:
    pid: int
    started_at: str
    database_url: str
    kafka_bootstrap_servers: str
    ports: Mapping[str, int]
    path: Path


def run_file(data_dir: Path) -> Path:
    return data_dir / RUN_FILE


def read_run_info(data_dir: Path) -> RunInfo | None:
    """The running `wpc up` that wrote ``<data_dir>/run.json``, or None (no file, not
    readable as the expected JSON, or its process is gone: `services.embedded.read_run_state`,
    which also tells a reused pid from the writer)."""
    doc = read_run_state(data_dir)
    if doc is None:
        return None
    raw_ports = doc.get("ports")
    ports = {str(k): v for k, v in raw_ports.items() if isinstance(v, int)} if isinstance(raw_ports, dict) else {}
    return RunInfo(
        pid=int(doc["pid"]),
        started_at=str(doc.get("started_at", "")),
        database_url=str(doc.get("database_url") or ""),
        kafka_bootstrap_servers=str(doc.get("kafka_bootstrap_servers") or ""),
        ports=ports,
        path=run_file(data_dir),
    )


def tool_database_url(database_url: str, data_dir: Path, *, explicit: str | None = None) -> str:
    """The database a tool works on: ``explicit`` (its --database-url), else
    WPC_DATABASE_URL (``database_url``), else that of the `wpc up` running with ``data_dir``.
    Raises `ConfigError` when there is none."""
    if explicit:
        return explicit
    if database_url:
        return database_url
    info = read_run_info(data_dir)
    if info is None or not info.database_url:
        raise ConfigError(f"no database: set WPC_DATABASE_URL or start `wpc up` (looked in {run_file(data_dir)})")
    print(f"using the database of `wpc up` (pid {info.pid}, from {info.path})", file=sys.stderr)
    return info.database_url
