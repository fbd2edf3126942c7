"""`wpc load-roster FILE --source PLAN`: load a health plan's PCP attribution roster.

The file is CSV with a header: ``member_id,practice_id,effective_from[,effective_to]``
(dates as YYYY-MM-DD). Rows are upserted on (member, practice, effective_from), so loading
the same file twice changes nothing; every practice must be in the notification
configuration (``WPC_NOTIFY_FILE``). The API does the same: ``POST /v1/roster``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from notifier.api import load_roster, parse_roster_csv
from notifier.service import config_of
from notifier.settings import NotifierSettings
from services import db
from services.configfile import ConfigError
from services.runinfo import tool_database_url
from services.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="CSV: member_id,practice_id,effective_from[,effective_to]")
    parser.add_argument("--source", required=True, help="the health plan the attribution comes from")


async def _load(settings: NotifierSettings, csv_text: str, source: str) -> int:
    cfg = config_of(settings)
    entries = parse_roster_csv(csv_text)
    engine = db.create_engine(settings.database_url, pool_size=1)
    try:
        return await load_roster(engine, cfg, source, entries)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(NotifierSettings)
    # WPC_DATABASE_URL, else the running `wpc up`'s database; none: ConfigError (exit 2)
    settings = settings.model_copy(update={"database_url": tool_database_url(settings.database_url, settings.data_dir)})
    try:
        loaded = asyncio.run(_load(settings, args.file.read_text(encoding="utf-8"), args.source))
    except ConfigError:
        raise  # the notification configuration: one line and exit 2, from `wpc`
    except ValueError as exc:
        print(f"wpc load-roster: {exc}")
        return 1
    print(f"loaded {loaded} roster rows from {args.file}")
    return 0
