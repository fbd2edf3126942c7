"""`wpc import PATH...`: load ADT history from files into the listener's database.

PATHs are files or directories (read recursively, in name order, hidden entries
skipped); each file is one message, a batch file (FHS/BHS), an MLLP-framed dump, or
any of these gzipped (`adt_listener.archive`). Every message is decided and stored as a
live one is, without an ACK (`adt_listener.bulk`); the running listener publishes the
events and the consumers fold them in, as for live traffic.

Stopped by Ctrl-C or killed, the import resumes where its last committed batch ended
when run again with the same files. While it runs, stderr shows a progress bar (on a
terminal: one line redrawn; otherwise a line every 10 s) with messages/s and the time
left, estimated on the bytes read; at the end, stdout gets the summary: accepted,
duplicates, errors by kind (ACK code, error code, place: never a message's content).

Exit status: 0 when every message was stored (AA, or a duplicate of one); 1 when some
were refused (AE/AR), a file could not be read, or the import was interrupted; 2 for a
wrong setting or a missing path (one line on stderr).

Database: WPC_DATABASE_URL, else the running `wpc up`'s. Senders: WPC_SENDERS_FILE,
as for the listener (an MSH-4 no sender owns is refused, as live).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from adt_listener.archive import find_files
from adt_listener.bulk import BulkImport, ImportBusy, ImportProgress, ImportSummary
from adt_listener.senders import load_senders
from adt_listener.settings import ListenerSettings
from services import db, lifecycle
from services.configfile import ConfigError
from services.runinfo import tool_database_url
from services.settings import load_settings

_REDRAW_S = 0.2  # on a terminal
_LINE_EVERY_S = 10.0  # otherwise
_BAR = 24


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories of ADT history")
    parser.add_argument("--batch", type=int, default=2000, help="messages per committed batch (2000)")
    parser.add_argument("--migrate", action="store_true", help="apply database migrations first")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """Progress on ``stream``: redrawn in place on a terminal, a plain line now and then elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self._drawn = False

    def line(self, p: ImportProgress) -> str:
        elapsed = max(time.monotonic() - p.started, 1e-9)
        fraction = min(p.bytes_done / p.bytes_total, 1.0) if p.bytes_total else 1.0
        rate = p.messages / elapsed
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        filled = int(fraction * _BAR)
        return (
            f"[{'#' * filled}{'.' * (_BAR - filled)}] {fraction:6.1%}  {p.messages:,} messages  "
            f"{rate:,.0f} msg/s  elapsed {_duration(elapsed)}  left {_duration(eta) if eta is not None else '?'}"
        )

    def __call__(self, p: ImportProgress) -> None:
        now = time.monotonic()
        if now - self._last < (_REDRAW_S if self._tty else _LINE_EVERY_S):
            return
        self._last = now
        if self._tty:
            self._stream.write("\r" + self.line(p) + "\x1b[K")
            self._drawn = True
        else:
            self._stream.write(self.line(p) + "\n")
        self._stream.flush()

    def close(self, p: ImportProgress | None) -> None:
        if self._tty and self._drawn:
            self._stream.write("\r" + (self.line(p) if p is not None else "") + "\x1b[K\n")
            self._stream.flush()


def summary_lines(s: ImportSummary) -> list[str]:
    rate = s.messages / s.seconds if s.seconds > 0 else 0.0
    lines = [
        f"files: {s.files} ({s.files_skipped} already imported, {s.files_resumed} resumed from a checkpoint)",
        f"messages stored: {s.messages:,} in {s.seconds:.1f} s ({rate:,.0f}/s): accepted {s.accepted:,}, "
        f"duplicates {s.duplicates:,}, errors {s.error_count:,}",
    ]
    for kind, n in sorted(s.errors.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {n:>9,}  {kind}")
    for path, reason in s.unreadable:
        lines.append(f"unreadable: {path}: {reason}")
    if s.interrupted:
        lines.append("interrupted: committed batches are kept; run the same command again to resume")
    return lines


async def _import(settings: ListenerSettings, args: argparse.Namespace, stop: asyncio.Event) -> ImportSummary:
    files, missing = find_files(args.paths)
    if missing:
        path, reason = missing[0]
        raise ConfigError(f"{path}: {reason}")
    senders = load_senders(settings.senders_file)
    bar = ProgressBar(sys.stderr) if not args.quiet else None
    last: list[ImportProgress] = []

    def progress(p: ImportProgress) -> None:
        last[:] = [p]
        if bar is not None:
            bar(p)

    engine = db.create_engine(settings.database_url, pool_size=1)
    try:
        if args.migrate:
            await db.migrate(engine)
        async with engine.connect() as conn:
            driver = await db.driver_connection(conn)
            importer = BulkImport(settings, senders, batch_size=args.batch, progress=progress, stop=stop)
            try:
                return await importer.run(driver, files)
            finally:
                if bar is not None:
                    bar.close(last[0] if last else None)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ConfigError(f"--batch must be positive, got {args.batch}")
    settings = load_settings(ListenerSettings)
    settings = settings.model_copy(update={"database_url": tool_database_url(settings.database_url, settings.data_dir)})
    lifecycle.collect_less_often()  # a batch's messages and rows are all alive until its commit

    async def main() -> ImportSummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt() -> None:
            if stop.is_set():  # a second Ctrl-C: stop now; the batch being written commits or not, whole
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        return await _import(settings, args, stop)

    try:
        summary = asyncio.run(main())
    except ImportBusy as exc:
        print(f"wpc import: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("wpc import: stopped; committed batches are kept; run the same command again to resume",
              file=sys.stderr)
        return 1
    except Exception as exc:
        if "import_checkpoint" in str(exc):
            print("wpc import: the database has no import_checkpoint table: run `wpc migrate` "
                  "(or add --migrate)", file=sys.stderr)
            return 1
        if type(exc).__module__.startswith(("asyncpg", "sqlalchemy")) or isinstance(exc, OSError):
            print(f"wpc import: database error ({type(exc).__name__}); committed batches are kept; "
                  "run the same command again to resume", file=sys.stderr)
            return 1
        raise
    for line in summary_lines(summary):
        print(line)
    ok = not (summary.interrupted or summary.error_count or summary.unreadable)
    return 0 if ok else 1
