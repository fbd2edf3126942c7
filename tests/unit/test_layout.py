"""The floors of the tree, read from the imports of every module (ARCHITECTURE.md).

    wpc/        entry points: the commands and the composition of the whole system
    bench/      benchmarks and the synthetic feed
    adt_listener/  enrollment_svc/  notifier/  webapp/   one service each
    services/   the shared runtime
    schemas/    the event contracts

Dependencies point down only: `services` imports no service package (nor `wpc`,
`bench`); a service package imports no other service package, nor `wpc` or `bench`;
`schemas` imports nothing of ours but `schemas`. Every import counts, also those made
inside a function to keep a command light: a lazy import is still a dependency.

One exception, said here and in ARCHITECTURE.md: the Alembic revisions under
``services/migrations/versions``. They are not modules of the runtime (Alembic loads
them by path when migrating; nothing imports them), and a data migration runs the code
that defines the stored data (0006 computes `adt_listener.digest.content_digest` of
every stored message), so it imports what it migrates.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("adt_listener", "enrollment_svc", "notifier", "webapp")
PACKAGES = ("wpc", "bench", *SERVICES, "services", "schemas")
MIGRATIONS = Path("services") / "migrations" / "versions"

# What each package may not import (besides itself).
FORBIDDEN: dict[str, frozenset[str]] = {
    "schemas": frozenset(PACKAGES) - {"schemas"},
    "services": frozenset({"wpc", "bench", *SERVICES}),
    **{service: frozenset({"wpc", "bench", *SERVICES}) - {service} for service in SERVICES},
    "bench": frozenset({"wpc"}),
    "wpc": frozenset(),
}


def imported_packages(source: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``source``, at any depth."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def violations(root: Path) -> list[str]:
    """``path:line: package imports other`` for every import across the floors."""
    out: list[str] = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative.is_relative_to(MIGRATIONS):
                continue
            for line, imported in sorted(imported_packages(path.read_text(encoding="utf-8"))):
                if imported in forbidden:
                    out.append(f"{relative}:{line}: {package} imports {imported}")
    return out


def test_every_package_is_checked() -> None:
    """A new top-level package must be given its floor here (and in ARCHITECTURE.md)."""
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert ours == set(PACKAGES) | {"tests"}


def test_dependencies_point_down() -> None:
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("services", "from adt_listener.er7 import decode\n", "services imports adt_listener"),
        ("services", "def f():\n    import notifier.config\n", "services imports notifier"),
        ("services", "from wpc import preflight\n", "services imports wpc"),
        ("notifier", "from enrollment_svc.rules import Rules\n", "notifier imports enrollment_svc"),
        ("adt_listener", "from wpc.tools.send import MllpClient\n", "adt_listener imports wpc"),
        ("enrollment_svc", "from bench.synthetic import synthetic_feed\n", "enrollment_svc imports bench"),
        ("schemas", "from services.settings import Settings\n", "schemas imports services"),
        ("bench", "from wpc.up import infrastructure\n", "bench imports wpc"),
    ],
)
def test_a_wrong_import_is_found(tmp_path: Path, package: str, source: str, expected: str) -> None:
    """The check itself: each rule catches the import it forbids, lazy ones included."""
    (tmp_path / package).mkdir()
    (tmp_path / package / "module.py").write_text(source, encoding="utf-8")
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].endswith(expected), found


def test_allowed_imports_pass(tmp_path: Path) -> None:
    for package, source in {
        "wpc": "from adt_listener.service import Listener\nfrom bench import ingest\n",
        "bench": "from adt_listener.mllp import MllpFramer\nfrom services import db\n",
        "notifier": "from services.bus import Record\nfrom schemas.enrollment import CandidateV1\n",
        "services": "from schemas.parked_event import ParkedEventV1\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "module.py").write_text(source, encoding="utf-8")
    assert violations(tmp_path) == []


# --- one home for each piece that had twins (issue 11) -------------------------------------------

ONE_HOME = {
    "INSERT INTO audit": "services/audit.py",  # the audit writer
    "get_raw_connection": "services/db.py",  # the way to the asyncpg connection
    "def split_messages": "adt_listener/er7.py",  # files and batches into messages
    '"8859/1"': "adt_listener/er7.py",  # the MSH-18 charset table
    "wait_for(stop.wait()": "",  # a stop-aware wait is services.lifecycle.pause
}


def homes(root: Path, needle: str) -> set[str]:
    return {str(p.relative_to(root)) for package in PACKAGES for p in (root / package).rglob("*.py")
            if not p.relative_to(root).is_relative_to(MIGRATIONS) and needle in p.read_text(encoding="utf-8")}


@pytest.mark.parametrize("needle", sorted(ONE_HOME))
def test_one_home(needle: str) -> None:
    expected = {ONE_HOME[needle]} if ONE_HOME[needle] else set()
    assert homes(ROOT, needle) == expected
