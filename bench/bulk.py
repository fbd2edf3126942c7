"""`wpc bench import`: a synthetic archive imported into a fresh database, with the system running.

    archive   N synthetic messages (`bench.synthetic`) written to one file: an MLLP dump,
              gzipped (``--form``: mllp-gz, mllp, er7, er7-gz)
    system    `wpc listener --migrate` (its relays derive and publish the events) and
              `wpc enrollment` (consumes `adt.events`: folds encounters, decides), each
              a process of its own, on the database and broker of the run
    import    `adt_listener.bulk.BulkImport` in this process, as `wpc import` runs it

Figures: messages/s *stored* (the import's own span: decided, committed with their
checkpoints), and *end to end*: from the start of the import until the enrollment
service has processed every accepted message (a ``processed_event`` row each, written
in the transaction that folds the event into its encounter and decides), polled every
0.2 s. The CPU seconds of the import and of each child process (with its workers) are
reported per message; PostgreSQL's and the broker's are not.
The synthetic feed is dated March 2025, older than ``candidate_max_age_hours``: the
history is folded and decided, and proposes nothing.

Output: a table for people, then ONE JSON line with the same figures, always last.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from bench import machine
from bench.ingest import _Child, _free_port, _senders_file, _wait_ready, _wait_tcp
from bench.synthetic import DEFAULT_FACILITIES, iter_feed

if TYPE_CHECKING:
    from adt_listener.settings import ListenerSettings

GOAL_PER_S = 5000.0  # issue 14: at least 5,000 messages/s end to end
FORMS = ("mllp-gz", "mllp", "er7", "er7-gz")
_POLL_S = 0.2


@dataclass(frozen=True)
class ImportOptions:
    messages: int = 100_000
    form: str = "mllp-gz"
    batch: int = 2000
    timeout_s: float = 1800.0  # end to end, at most


def write_archive(path: Path, messages: int, seed: int, form: str) -> int:
    """The archive of the run; returns its size in bytes."""
    from adt_listener.mllp import encode

    feed = iter_feed(seed=seed, facilities=DEFAULT_FACILITIES)
    out: BinaryIO = gzip.GzipFile(path, "wb", compresslevel=1) if form.endswith("-gz") else path.open("wb")  # type: ignore[assignment]
    with out:
        for _ in range(messages):
            message = next(feed)
            out.write(encode(message) if form.startswith("mllp") else message)
    return path.stat().st_size


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its live children (the listener's
    event-deriving worker), from Linux /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu_s(int(child)) for child in children)


async def bench_import(
    options: ImportOptions, settings: ListenerSettings, *, out: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run `wpc bench import`; print the table and the JSON line; return the JSON object.

    ``settings``: with database / broker empty, embedded ones are started; a configured
    database server gets a new database for the run, dropped at the end."""
    from services import db
    from services.infrastructure import infrastructure

    with tempfile.TemporaryDirectory(prefix="wpc-bench-import-") as tmp_name:
        tmp = Path(tmp_name)
        async with infrastructure(settings.model_copy(update={"data_dir": tmp})) as ready:
            url, created = ready.database_url, None
            if settings.database_url:
                url, created = await db.create_scratch_database(ready.database_url, "wpc_bench_import")
            try:
                reference = machine.reference_ms()
                report = await _run(options, ready, url, tmp, out)
                report["reference_ms"] = [reference, machine.reference_ms()]
            finally:
                if created is not None:
                    await db.drop_database(url, created)
    _print_report(report, out)
    return report


async def _run(
    options: ImportOptions, ready: ListenerSettings, url: str, tmp: Path, out: Callable[[str], None]
) -> dict[str, Any]:
    import asyncpg

    from adt_listener.archive import find_files
    from adt_listener.bulk import BulkImport
    from adt_listener.senders import load_senders
    from services import lifecycle

    seed = secrets.randbelow(900_000) + 100_000
    archive = tmp / f"archive.{options.form}"
    out(f"writing {options.messages:,} synthetic messages ({options.form}) ...")
    size = write_archive(archive, options.messages, seed, options.form)
    senders = _senders_file(tmp / "senders.yaml", "sampled")
    http_port, enrollment_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "WPC_DATABASE_URL": url,
        "WPC_KAFKA_BOOTSTRAP_SERVERS": ready.kafka_bootstrap_servers,
        "WPC_MLLP_HOST": "127.0.0.1",
        "WPC_MLLP_PORT": str(_free_port()),
        "WPC_HTTP_HOST": "127.0.0.1",
        "WPC_LISTENER_HTTP_PORT": str(http_port),
        "WPC_ENROLLMENT_HTTP_PORT": str(enrollment_port),
        "WPC_TOPIC_ADT_EVENTS": ready.topic_adt_events,
        "WPC_TOPIC_ADT_DEADLETTER": ready.topic_adt_deadletter,
        "WPC_SENDERS_FILE": str(senders),
        "WPC_DATA_DIR": str(tmp),
    }
    wpc = [sys.executable, "-m", "wpc.cli"]
    listener = _Child("wpc listener", [*wpc, "listener", "--migrate"], tmp / "listener.log", env)
    enrollment: _Child | None = None
    try:
        await _wait_ready(http_port, listener, 120)
        enrollment = _Child("wpc enrollment", [*wpc, "enrollment"], tmp / "enrollment.log", env)
        await _wait_tcp(enrollment_port, enrollment, 120)
        children = {"listener": listener.proc.pid, "enrollment": enrollment.proc.pid}
        cpu_before = {name: _cpu_s(pid) for name, pid in children.items()}
        settings = ready.model_copy(update={"database_url": url, "senders_file": senders})
        files, _ = find_files([archive])
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            out("importing with the listener and the enrollment service running ...")
            own_cpu = resource.getrusage(resource.RUSAGE_SELF)
            ticks = machine.ticks()
            started = time.perf_counter()
            lifecycle.collect_less_often()  # as `wpc import` does
            summary = await BulkImport(settings, load_senders(senders), batch_size=options.batch).run(conn, files)
            stored_s = time.perf_counter() - started
            import_cpu = resource.getrusage(resource.RUSAGE_SELF)
            processed = 0
            deadline = started + options.timeout_s
            while time.perf_counter() < deadline:
                processed = int(await conn.fetchval("SELECT count(*) FROM processed_event"))
                if processed >= summary.accepted:
                    break
                await asyncio.sleep(_POLL_S)
            e2e_s = time.perf_counter() - started
            shares = machine.shares(ticks, machine.ticks())
            encounters = int(await conn.fetchval("SELECT count(*) FROM encounter"))
        finally:
            await conn.close()
        cpu = {name: _cpu_s(pid) - cpu_before[name] for name, pid in children.items()}
        cpu["import"] = (import_cpu.ru_utime + import_cpu.ru_stime) - (own_cpu.ru_utime + own_cpu.ru_stime)
    finally:
        if enrollment is not None:
            await enrollment.stop()
        await listener.stop()
    accepted = summary.accepted
    complete = processed >= accepted
    e2e_rate = accepted / e2e_s if complete and e2e_s > 0 else 0.0
    return {
        "bench": "import",
        "cpus": os.cpu_count(),
        "messages": options.messages,
        "form": options.form,
        "archive_bytes": size,
        "batch": options.batch,
        "stored": {"messages": summary.messages, "accepted": accepted, "duplicates": summary.duplicates,
                   "errors": summary.error_count, "seconds": round(stored_s, 2),
                   "per_s": round(summary.messages / stored_s, 1) if stored_s else 0.0},
        "end_to_end": {"processed_events": processed, "encounters": encounters, "complete": complete,
                       "seconds": round(e2e_s, 2), "per_s": round(e2e_rate, 1)},
        "cpu_ms_per_message": {name: round(1000 * s / max(accepted, 1), 3) for name, s in cpu.items()},
        **shares.as_json(),
        "goal": {"end_to_end_ge_5000_per_s": "PASS" if e2e_rate >= GOAL_PER_S else "FAIL"},
    }


def _print_report(report: dict[str, Any], out: Callable[[str], None]) -> None:
    s, e = report["stored"], report["end_to_end"]
    out("")
    out(f"wpc bench import: {report['messages']:,} synthetic messages, {report['form']} "
        f"({report['archive_bytes']:,} bytes), batches of {report['batch']}, {report['cpus']} CPUs")
    out(f"{'stage':<34}{'messages':>12}{'seconds':>10}{'msg/s':>12}")
    out(f"{'stored (import)':<34}{s['messages']:>12,}{s['seconds']:>10.2f}{s['per_s']:>12,.1f}")
    out(f"{'end to end (folded and decided)':<34}{e['processed_events']:>12,}{e['seconds']:>10.2f}"
        f"{e['per_s']:>12,.1f}" + ("" if e["complete"] else "  (incomplete at the timeout)"))
    out(f"accepted {s['accepted']:,}, duplicates {s['duplicates']:,}, errors {s['errors']:,}; "
        f"encounters {e['encounters']:,}")
    cpu = report["cpu_ms_per_message"]
    out("CPU ms per message: " + ", ".join(f"{name} {ms:.3f}" for name, ms in cpu.items())
        + " (PostgreSQL and the broker not counted)")
    out(machine.Shares(report["machine_cpu_busy"], report["host_steal"]).describe())
    out(f"goal: >= {GOAL_PER_S:,.0f} msg/s end to end ......... {report['goal']['end_to_end_ge_5000_per_s']}")
    out(machine.describe_reference(report["reference_ms"]))
    out(json.dumps(report, separators=(",", ":")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the archive (100000)")
    parser.add_argument("--form", choices=FORMS, default="mllp-gz", help="archive form (mllp-gz)")
    parser.add_argument("--batch", type=int, default=2000, help="messages per committed batch (2000)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait end to end (1800)")


def run(args: argparse.Namespace) -> int:
    from adt_listener.settings import ListenerSettings
    from services import lifecycle
    from services.settings import load_settings

    if args.messages < 1 or args.batch < 1:
        from services.configfile import ConfigError

        raise ConfigError("--messages and --batch must be positive")
    options = ImportOptions(messages=args.messages, form=args.form, batch=args.batch, timeout_s=args.timeout)

    async def main() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # unwinds every `finally`: children, embedded servers
        return await bench_import(options, load_settings(ListenerSettings))

    try:
        report: dict[str, Any] = lifecycle.run(main())
    except asyncio.CancelledError:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    return 0 if report["end_to_end"]["complete"] else 1
