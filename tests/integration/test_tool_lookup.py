"""The tools find the database of the `wpc up` running here by its run.json, when
WPC_DATABASE_URL is unset; and say in one line where they looked when there is none."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.runinfo import read_run_info

ROOT = Path(__file__).resolve().parents[2]


def run_wpc(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("WPC_")}
    return subprocess.run([sys.executable, "-m", "wpc.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**clean, "WPC_DATA_DIR": str(data_dir), **env})


def write_run_file(data_dir: Path, pid: int, database_url: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "run.json").write_text(json.dumps({
        # written now, as `wpc up` writes it once up: after its process started
        "pid": pid, "started_at": dt.datetime.now(dt.UTC).isoformat(), "database_url": database_url,
        "kafka_bootstrap_servers": "127.0.0.1:9092", "postgres": None, "broker": None,
        "ports": {"mllp": 2575, "listener_http": 8080, "enrollment_http": 8081, "notifier_http": 8082,
                  "demo_inbox": 8083},
    }))


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()  # reaped: the pid is free
    return done.pid


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["feed-report"], "(no messages)"),
        (["replay"], '"dry_run": true'),
        (["migrate"], "migrations applied"),
        (["load-roster", "{roster}", "--source", "PLAN"], "loaded 1 roster rows"),
    ],
    ids=["feed-report", "replay", "migrate", "load-roster"],
)
def test_tools_use_the_running_wpc_up(args: list[str], expected: str, database_url: str, tmp_path: Path) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text("member_id,practice_id,effective_from\nM1,eastside-clinic,2026-01-01\n")
    write_run_file(tmp_path / "data", os.getpid(), database_url)
    done = run_wpc(*[a.format(roster=roster) for a in args], data_dir=tmp_path / "data",
                   WPC_NOTIFY_FILE=str(ROOT / "deploy" / "notify" / "wpc-notify.yaml"))
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    assert f"using the database of `wpc up` (pid {os.getpid()}" in done.stderr


@pytest.mark.parametrize(("command", "run_file"), [("feed-report", "stale"), ("replay", "stale"), ("migrate", "none")])
def test_no_database_is_one_line(command: str, run_file: str, database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    if run_file == "stale":  # a `wpc up` that was killed: its file stays, its process is gone
        write_run_file(data_dir, dead_pid(), database_url)
    done = run_wpc(command, data_dir=data_dir)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"wpc {command}: no database: set WPC_DATABASE_URL or start `wpc up` (looked in {data_dir / 'run.json'})"
    ]


def test_read_run_info(tmp_path: Path) -> None:
    assert read_run_info(tmp_path) is None
    (tmp_path / "run.json").write_text("{not json")
    assert read_run_info(tmp_path) is None
    write_run_file(tmp_path, os.getpid(), "postgresql://x/y")
    info = read_run_info(tmp_path)
    assert info is not None and (info.pid, info.database_url, info.ports["mllp"]) == (os.getpid(), "postgresql://x/y",
                                                                                      2575)
    write_run_file(tmp_path, dead_pid(), "postgresql://x/y")
    assert read_run_info(tmp_path) is None
