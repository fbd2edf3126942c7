"""`make browser` (.ci/install-browser), which `make test` runs first: Debian's chromium and
chromium-driver are installed when missing, also when .venv was made before they were
needed, and a browser that cannot be installed gives one line, before any test runs.

The machine's own chromium stays where it is: the script is pointed at paths in a temporary
directory (CHROMIUM, CHROMEDRIVER) and run with a PATH of stand-ins for apt-get, id and sudo
that record how they were called (and "install" by creating the two programs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "install-browser"
# What the script and the apt-get stand-in run (and bash, for `make`'s recipe).
TOOLS = ("bash", "mktemp", "tail", "sed", "rm", "touch", "chmod")
PACKAGES = ["chromium", "chromium-driver"]


@dataclass
class Machine:
    """A PATH of stand-ins, and the two programs' paths (absent until "installed")."""

    root: Path
    chromium: Path
    chromedriver: Path
    calls: Path

    def env(self) -> dict[str, str]:
        return {"PATH": str(self.root / "bin"), "CHROMIUM": str(self.chromium),
                "CHROMEDRIVER": str(self.chromedriver), "HOME": str(self.root)}

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([shutil.which("bash") or "/bin/bash", str(SCRIPT)], env=self.env(),
                              capture_output=True, text=True, timeout=60, check=False)

    def called(self) -> list[list[str]]:
        if not self.calls.exists():
            return []
        return [line.split() for line in self.calls.read_text().splitlines()]

    def stand_in(self, name: str, body: str) -> None:
        path = self.root / "bin" / name
        path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
        path.chmod(0o755)

    def install_both(self) -> None:
        for program in (self.chromium, self.chromedriver):
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)


def _machine(tmp_path: Path, *, uid: int = 0, apt: str | None = "installs", sudo: bool = False) -> Machine:
    """``apt``: "installs" (creates the programs), "fails" (no such package), None (no apt-get)."""
    (tmp_path / "bin").mkdir()
    m = Machine(tmp_path, tmp_path / "usr-bin" / "chromium", tmp_path / "usr-bin" / "chromedriver",
                tmp_path / "calls.log")
    m.chromium.parent.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, tool
        (tmp_path / "bin" / tool).symlink_to(real)
    m.stand_in("id", f'[ "$1" = -u ] && echo {uid}')
    if apt == "installs":
        install = "\n".join(f"touch {p} && chmod 755 {p}" for p in (m.chromium, m.chromedriver))
        m.stand_in("apt-get", f'echo "apt-get $*" >> {m.calls}\nif [ "$1" = install ]; then\n{install}\nfi')
    elif apt == "fails":
        refuse = 'echo "E: Unable to locate package chromium" >&2; exit 100'
        m.stand_in("apt-get", f'echo "apt-get $*" >> {m.calls}\nif [ "$1" = install ]; then {refuse}; fi')
    if sudo:
        m.stand_in("sudo", f'echo "sudo $*" >> {m.calls}\n[ "$1" = -n ] && shift\n"$@"')
    return m


def _one_line(stderr: str, *missing: Path) -> str:
    lines = stderr.strip().splitlines()
    assert lines, "nothing said"
    last = lines[-1]
    assert all(str(p) in last for p in missing), last
    assert all(p in last for p in PACKAGES) and "apt-get install" in last, last
    return last


def test_nothing_is_done_when_both_are_installed(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    m.install_both()
    result = m.run()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert m.called() == []


def test_missing_programs_are_installed_with_apt_as_root(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    result = m.run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    calls = m.called()
    assert calls[0][:2] == ["apt-get", "update"]
    assert calls[1][:2] == ["apt-get", "install"] and "-y" in calls[1] and calls[1][-2:] == PACKAGES
    assert os.access(m.chromium, os.X_OK) and os.access(m.chromedriver, os.X_OK)


def test_a_missing_driver_alone_is_installed_too(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    m.chromium.write_text("#!/bin/sh\n")
    m.chromium.chmod(0o755)
    assert m.run().returncode == 0
    assert [c[:2] for c in m.called()] == [["apt-get", "update"], ["apt-get", "install"]]


def test_a_failed_install_ends_with_one_line_naming_what_is_missing(tmp_path: Path) -> None:
    m = _machine(tmp_path, apt="fails")
    result = m.run()
    assert result.returncode == 1
    _one_line(result.stderr, m.chromium, m.chromedriver)
    # apt's own reason is shown above it.
    assert "apt-get: E: Unable to locate package chromium" in result.stderr


def test_without_root_or_sudo_nothing_is_tried_and_one_line_says_what_to_do(tmp_path: Path) -> None:
    m = _machine(tmp_path, uid=1000)
    result = m.run()
    assert result.returncode == 1
    assert m.called() == []
    assert len(result.stderr.splitlines()) == 1
    _one_line(result.stderr, m.chromium, m.chromedriver)


def test_a_password_less_sudo_is_used_when_not_root(tmp_path: Path) -> None:
    m = _machine(tmp_path, uid=1000, sudo=True)
    result = m.run()
    assert result.returncode == 0, result.stderr
    through_sudo = [c[2:4] for c in m.called() if c[:2] == ["sudo", "-n"]]
    assert ["apt-get", "update"] in through_sudo and ["apt-get", "install"] in through_sudo
    assert os.access(m.chromedriver, os.X_OK)


def test_without_apt_one_line_says_what_to_install(tmp_path: Path) -> None:
    m = _machine(tmp_path, apt=None)
    result = m.run()
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    _one_line(result.stderr, m.chromium, m.chromedriver)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile and .ci of this checkout, in a directory whose .venv is already made
    (its stamp newer than pyproject.toml), as on a machine where chromium came later."""
    where = tmp_path / "checkout"
    where.mkdir()
    shutil.copy(ROOT / "Makefile", where / "Makefile")
    shutil.copytree(ROOT / ".ci", where / ".ci")
    (where / "pyproject.toml").write_text("")
    stamp = where / ".venv" / ".installed-stamp"
    stamp.parent.mkdir()
    stamp.write_text("")
    os.utime(where / "pyproject.toml", (1, 1))
    return where


def _make(checkout: Path, m: Machine, *args: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: `make test` is the project's entry point")
    return subprocess.run([make, "--no-print-directory", "-C", str(checkout), *args], env=m.env(),
                          capture_output=True, text=True, timeout=60, check=False)


def test_make_test_checks_the_browser_although_venv_exists(tmp_path: Path, checkout: Path) -> None:
    (tmp_path / "machine").mkdir()
    m = _machine(tmp_path / "machine", apt=None)
    result = _make(checkout, m, "test")
    assert result.returncode != 0
    # Stopped at the browser, before the checks and the suite (no venv install either: it exists).
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1, result.stderr
    _one_line(ours[0], m.chromium, m.chromedriver)
    assert "pip install" not in result.stdout and "ruff" not in result.stdout and "pytest" not in result.stdout


def test_make_test_goes_on_once_the_browser_is_installed(tmp_path: Path, checkout: Path) -> None:
    (tmp_path / "machine").mkdir()
    m = _machine(tmp_path / "machine")
    result = _make(checkout, m, "browser")
    assert result.returncode == 0, result.stderr
    assert os.access(m.chromedriver, os.X_OK)
    # -n: what `make test` runs, in order (the browser step first, then the checks and the suite).
    dry = _make(checkout, m, "-n", "test")
    steps = dry.stdout.splitlines()
    browser = next(i for i, s in enumerate(steps) if ".ci/install-browser" in s)
    suite = next(i for i, s in enumerate(steps) if "-m pytest" in s)
    assert browser < suite
