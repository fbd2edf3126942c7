"""`wpc feed-report`: the listener's per-facility feed quality (`adt_listener.feed_report`)
as a table, from the database of WPC_DATABASE_URL or of the running `wpc up`."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from adt_listener.feed_report import FacilityQuality, feed_quality


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None, help="default: WPC_DATABASE_URL")
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        default=None,
        help="only messages received from then (ISO 8601)",
    )


def format_table(report: list[FacilityQuality]) -> str:
    header = f"{'facility':<24} {'received':>9} {'AA':>9} {'AE/AR':>9} {'pending':>9} {'checked':>9} {'findings':>9}"
    lines = [header, "-" * len(header)]
    for q in report:
        lines.append(
            f"{q.sending_facility or '(none)':<24} {q.received:>9} {q.accepted:>9} {q.rejected:>9}"
            f" {q.pending_check:>9} {q.checked:>9} {q.with_findings:>9}"
        )
        for f in q.top_findings:
            lines.append(f"    {f.messages:>7} x {f.kind} at {f.location or '-'}")
        if (reuse := q.control_id_reuse) is not None:
            lines.append(
                f"    {reuse.messages:>7} x new message under a control id already used"
                f" ({reuse.control_ids} control ids; first {reuse.first_seen.isoformat(timespec='seconds')},"
                f" last {reuse.last_seen.isoformat(timespec='seconds')})"
            )
    if not report:
        lines.append("(no messages)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from services.db import create_engine
    from services.runinfo import tool_database_url
    from services.settings import ServiceSettings, load_settings

    settings = load_settings(ServiceSettings)
    # --database-url, else WPC_DATABASE_URL, else the running `wpc up`'s; none: ConfigError (exit 2)
    url = tool_database_url(settings.database_url, settings.data_dir, explicit=args.database_url)

    async def report() -> list[FacilityQuality]:
        engine = create_engine(url, pool_size=1)
        try:
            return await feed_quality(engine, since=args.since)
        finally:
            await engine.dispose()

    print(format_table(asyncio.run(report())))
    return 0
