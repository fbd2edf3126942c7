"""Finding a running `wpc up` from another shell: ``<WPC_DATA_DIR>/run.json``.

`wpc up` writes the file when it is up (pid, start time, the database URL and broker of
its embedded servers, its ports) and removes it when it stops. The tools (`wpc
feed-report`, `wpc replay`, `wpc load-roster`, `wpc migrate`, `wpc send`) read it when
nothing is configured, so a newcomer who started `wpc up` needs no URL to use them.

A file whose process is gone (a crash, a SIGKILL) is ignored: the pid is checked with
``os.kill(pid, 0)``, which sends nothing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.configfile import ConfigError

__all__ = ["RunInfo", "pid_alive", "read_run_info", "run_file", "tool_database_url"]

RUN_FILE = "run.json"


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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def read_run_info(data_dir: Path) -> RunInfo | None:
    """The running `wpc up` that wrote ``<data_dir>/run.json``, or None (no file, not
    readable as the expected JSON, or its process is gone)."""
    path = run_file(data_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not pid_alive(pid):
        return None
    raw_ports = doc.get("ports")
    ports = {str(k): v for k, v in raw_ports.items() if isinstance(v, int)} if isinstance(raw_ports, dict) else {}
    return RunInfo(
        pid=pid,
        started_at=str(doc.get("started_at", "")),
        database_url=str(doc.get("database_url") or ""),
        kafka_bootstrap_servers=str(doc.get("kafka_bootstrap_servers") or ""),
        ports=ports,
        path=path,
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
