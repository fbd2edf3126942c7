"""Each mistake a new user makes ends in one or two lines naming the variable or the file
(with the line), a non-zero exit status (2: configuration, 1: this machine), and nothing
started. The real `wpc` command runs as a subprocess, as a person would run it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.embedded import free_port
from tests.conftest import Broker

ROOT = Path(__file__).resolve().parents[2]
RULES_TEXT = (ROOT / "deploy" / "rules" / "wpc-rules.yaml").read_text(encoding="utf-8")
NOTIFY_TEXT = (ROOT / "deploy" / "notify" / "wpc-notify.yaml").read_text(encoding="utf-8")


@dataclass
class Result:
    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return (self.out + self.err).splitlines()


def base_env() -> dict[str, str]:
    """The test's environment without any WPC_ setting (those of the developer's shell)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("WPC_")}


def wpc(*args: str, env: dict[str, str], timeout: float = 60) -> Result:
    done = subprocess.run([sys.executable, "-m", "wpc.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def refused(result: Result, status: int, *needles: str) -> str:
    """The checks every refusal must pass; returns its text."""
    text = result.out + result.err
    assert result.status == status, text
    assert "Traceback" not in text, text
    assert 1 <= len(result.lines) <= 2, text
    assert "is up" not in text and "embedded" not in text, "something started"
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture
def env(database_url: str, broker: Broker, tmp_path: Path) -> dict[str, str]:
    """`wpc up` against the test's database and broker on free ports: if a check let a
    mistake through, the command would start (and the test fail), embedding nothing."""
    suffix = uuid.uuid4().hex[:8]
    return {
        **base_env(),
        "WPC_DATABASE_URL": database_url,
        "WPC_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "WPC_DATA_DIR": str(tmp_path / "data"),
        "WPC_MLLP_HOST": "127.0.0.1",
        "WPC_HTTP_HOST": "127.0.0.1",
        "WPC_MLLP_PORT": str(free_port()),
        "WPC_LISTENER_HTTP_PORT": str(free_port()),
        "WPC_ENROLLMENT_HTTP_PORT": str(free_port()),
        "WPC_NOTIFIER_HTTP_PORT": str(free_port()),
        "WPC_DEMO_INBOX_PORT": str(free_port()),
        **{f"WPC_TOPIC_{t}": f"{t.lower()}.{suffix}" for t in
           ("ADT_EVENTS", "ADT_DEADLETTER", "ENROLLMENT_CANDIDATES", "ENROLLMENT_EVENTS", "NOTIFICATIONS_DEADLETTER")},
        "WPC_ENROLLMENT_GROUP_ID": f"enrollment-{suffix}",
        "WPC_NOTIFIER_GROUP_ID": f"notifier-{suffix}",
    }


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


# --- settings ---------------------------------------------------------------------------------


def test_port_not_an_integer(env: dict[str, str]) -> None:
    result = wpc("up", env={**env, "WPC_MLLP_PORT": "abc"})
    refused(result, 2, "WPC_MLLP_PORT='abc': not an integer (e.g. WPC_MLLP_PORT=2575)")


def test_unknown_log_level(env: dict[str, str]) -> None:
    result = wpc("up", env={**env, "WPC_LOG_LEVEL": "verbose"})
    refused(result, 2, "WPC_LOG_LEVEL='verbose'", "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL")


def test_several_wrong_settings_are_two_lines(env: dict[str, str]) -> None:
    result = wpc("listener", env={**env, "WPC_MLLP_PORT": "abc", "WPC_LOG_JSON": "maybe", "WPC_LOG_LEVEL": "x"})
    refused(result, 2, "WPC_", "(and 2 more problems)", "`wpc check-config` lists every problem")


# --- files ------------------------------------------------------------------------------------


def test_rules_file_that_does_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "rules" / "x.yaml"
    result = wpc("up", env={**env, "WPC_RULES_FILE": str(missing)})
    refused(result, 2, f"WPC_RULES_FILE={missing}: no such file", "deploy/rules/wpc-rules.yaml")


def test_rules_file_with_a_yaml_syntax_error(env: dict[str, str], tmp_path: Path) -> None:
    text = RULES_TEXT.replace("  timezone: America/Los_Angeles", "  timezone: [America/Los_Angeles", 1)
    path = tmp_path / "x.yaml"
    path.write_text(text)
    result = wpc("up", env={**env, "WPC_RULES_FILE": str(path)})
    refused(result, 2, f"{path} line ", "YAML syntax error")
    assert "<unicode string>" not in result.err


def test_value_set_code_that_cannot_be_icd10(env: dict[str, str], tmp_path: Path) -> None:
    text = RULES_TEXT.replace("include: [F20, F21,", "include: [F20, F2l,", 1)
    path = tmp_path / "x.yaml"
    path.write_text(text)
    result = wpc("enrollment", env={**env, "WPC_RULES_FILE": str(path)})
    refused(result, 2, f"{path} line {line_of(text, 'F2l')}: value_sets.smi.include[1]: 'F2l'", "did you mean F21?")


def test_notify_file_without_a_team_for_a_program(env: dict[str, str], tmp_path: Path) -> None:
    text = NOTIFY_TEXT.replace("programs: [ISR]", "programs: [TOC]")
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    result = wpc("up", env={**env, "WPC_NOTIFY_FILE": str(path)})
    refused(result, 2, f"{path} line {line_of(text, 'care_teams:')}: care_teams: no care team serves ISR")


def test_notifier_without_its_file(env: dict[str, str]) -> None:
    refused(wpc("notifier", env=env), 2, "WPC_NOTIFY_FILE is not set", "deploy/notify/wpc-notify.yaml")


def test_users_file_with_an_unknown_role(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("- name: a\n  token_sha256: " + "ab" * 32 + "\n  roles: [care_team:TOX]\n")
    refused(wpc("up", env={**env, "WPC_USERS_FILE": str(path)}), 2, f"{path} line 3: [0].roles: unknown roles")


def test_senders_file_and_tls_files_that_do_not_exist(env: dict[str, str], tmp_path: Path) -> None:
    result = wpc("listener", env={**env, "WPC_SENDERS_FILE": str(tmp_path / "s.yaml")})
    refused(result, 2, f"WPC_SENDERS_FILE={tmp_path / 's.yaml'}: no such file")
    result = wpc("listener", env={**env, "WPC_TLS_CERT_FILE": str(tmp_path / "c.pem")})
    refused(result, 2, f"WPC_TLS_CERT_FILE={tmp_path / 'c.pem'}: no such file")


# --- this machine -----------------------------------------------------------------------------


def test_port_in_use(env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = wpc("up", "--mllp-port", str(port), env=env)
    refused(result, 1, f"port {port} (WPC_MLLP_PORT) is in use", f"`wpc up --mllp-port {port + 1}`")


def test_database_unreachable(env: dict[str, str]) -> None:
    url = f"postgresql://wpc:s3cret-pw@127.0.0.1:{free_port()}/wpc"
    text = refused(wpc("up", env={**env, "WPC_DATABASE_URL": url}), 1, "database not reachable", "WPC_DATABASE_URL")
    assert "s3cret-pw" not in text


def test_a_second_wpc_up_named_by_its_run_file(env: dict[str, str], tmp_path: Path) -> None:
    run_file = tmp_path / "data" / "run.json"
    run_file.parent.mkdir()
    # Written now, by a live process that started before it: what a running `wpc up` leaves
    # (a file older than its pid's process would be a dead run's, its pid reused).
    now = dt.datetime.now(dt.UTC).isoformat()
    run_file.write_text(f'{{"pid": {os.getpid()}, "started_at": "{now}", "ports": {{}}}}')
    refused(wpc("up", env=env), 1, f"wpc up is already running (pid {os.getpid()}")


@pytest.fixture
def running_up(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `wpc up`, until it has printed that it is up."""
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wpc.cli", "up"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while b"WPC backend is up" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_second_wpc_up_on_the_same_ports(env: dict[str, str], running_up: subprocess.Popen[bytes]) -> None:
    # No run.json here (the first one's may not write it): the ports tell.
    result = wpc("up", env={**env, "WPC_DATA_DIR": env["WPC_DATA_DIR"] + "-2"})
    refused(result, 1, f"wpc up is already running (pid {running_up.pid})")


# --- wpc check-config -------------------------------------------------------------------------


def test_check_config_passes_the_examples(env: dict[str, str]) -> None:
    result = wpc("check-config", env={**env, "WPC_RULES_FILE": "deploy/rules/wpc-rules.yaml",
                                      "WPC_USERS_FILE": "deploy/users.example.yaml"})
    assert result.status == 0, result.err
    assert result.out.splitlines()[-1] == "configuration OK"
    assert "rules      deploy/rules/wpc-rules.yaml: version " in result.out


def test_check_config_lists_every_problem(env: dict[str, str], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_TEXT.replace("include: [F20, F21,", "include: [F20, F2l,", 1))
    result = wpc("check-config", env={**env, "WPC_RULES_FILE": str(rules), "WPC_USERS_FILE": str(tmp_path / "u"),
                                      "WPC_TLS_KEY_FILE": str(tmp_path / "k.pem")})
    assert result.status == 2
    problems = result.err.splitlines()
    assert len(problems) == 3, result.err  # F2l, the users file, the key file
    assert f"{rules} line {line_of(rules.read_text(), 'F2l')}: " in problems[0] and "did you mean F21?" in problems[0]
    assert any(f"WPC_USERS_FILE={tmp_path / 'u'}: no such file" in p for p in problems)
    assert any(f"WPC_TLS_KEY_FILE={tmp_path / 'k.pem'}: no such file" in p for p in problems)
    assert "Traceback" not in result.err
