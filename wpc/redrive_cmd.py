"""`wpc redrive`: apply parked records again, after a fix (`services.parking`).

    wpc redrive                         list what is parked; nothing is re-driven
    wpc redrive --id 3 --id 7           re-drive these parked records
    wpc redrive --all [--group G]       re-drive every parked record (of one consumer group)

The groups are the enrollment service's (WPC_ENROLLMENT_GROUP_ID) and the notifier's
(WPC_NOTIFIER_GROUP_ID). Their handlers run in this process against the configured
database (WPC_DATABASE_URL), with the same configuration the services use (rules file,
notify file; the demo configuration of `wpc up` when WPC_NOTIFY_FILE is unset); what they
publish goes to the outbox, which the running services' relay publishes. Output is ids,
groups and error classes, never record content.

Exit status: 0 when every record asked for was re-driven, 1 when some still fail (kept
parked with the new error) or were not parked, 2 when unconfigured or the database is away.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.settings import EnrollmentSettings
from notifier.settings import NotifierSettings
from services import db
from services.consumer import is_transient
from services.parking import Parking, Reapply
from services.settings import load_settings

Factory = Callable[[AsyncEngine], tuple[Parking, Reapply]]


def _enrollment(settings: EnrollmentSettings, engine: AsyncEngine) -> tuple[Parking, Reapply]:
    from enrollment_svc.service import redrive_handler

    return redrive_handler(settings, engine)


def _notifier(settings: NotifierSettings, engine: AsyncEngine) -> tuple[Parking, Reapply]:
    from notifier.config import load_config
    from notifier.service import redrive_handler
    from wpc.demo_inbox import demo_config

    config = (load_config(settings.notify_file) if settings.notify_file is not None
              else demo_config(f"http://127.0.0.1:{settings.demo_inbox_port}"))
    return redrive_handler(settings, engine, config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", help="only this consumer group (default: both services' groups)")
    parser.add_argument("--id", dest="ids", type=int, action="extend", nargs="+", metavar="N",
                        help="re-drive these parked records (ids from the list or GET /v1/parked)")
    parser.add_argument("--all", action="store_true", help="re-drive every parked record")


async def _main(args: argparse.Namespace, enrollment: EnrollmentSettings, notifier: NotifierSettings) -> int:
    groups: dict[str, Factory] = {
        enrollment.enrollment_group_id: functools.partial(_enrollment, enrollment),
        notifier.notifier_group_id: functools.partial(_notifier, notifier),
    }
    if args.group is not None and args.group not in groups:
        print(f"wpc redrive: unknown consumer group {args.group!r} (known: {', '.join(groups)})")
        return 2
    chosen = [args.group] if args.group else list(groups)
    engine = db.create_engine(enrollment.database_url, pool_size=2)
    status = 0
    try:
        asked = set(args.ids or [])
        found: set[int] = set()
        for group in chosen:
            parking, reapply = groups[group](engine)
            if not args.ids and not args.all:
                for row in await parking.listing():
                    print(f"{row['id']}\t{group}\t{row['topic']}/{row['partition']}@{row['offset']}\t"
                          f"{row['error_class']}\tattempts {row['attempts']}\tparked {row['parked_at']:%Y-%m-%d %H:%M}")
                continue
            for done in await parking.redrive(args.ids or None, reapply, actor=f"cli:{getpass.getuser()}"):
                found.add(done.id)
                print(f"{done.id}\t{group}\t{done.outcome}" + (f"\t{done.error_class}" if done.error_class else ""))
                if done.outcome != "redriven":
                    status = 1
        for missing in sorted(asked - found):
            print(f"{missing}\t-\tnot parked (unknown id, another group, or re-driven already)")
            status = 1
    except Exception as exc:
        if not is_transient(exc):
            raise
        print(f"wpc redrive: the database is unavailable ({type(exc).__name__}); nothing more was re-driven")
        return 2
    finally:
        await engine.dispose()
    return status


def run(args: argparse.Namespace) -> int:
    enrollment, notifier = load_settings(EnrollmentSettings), load_settings(NotifierSettings)
    if not enrollment.database_url:
        print("wpc redrive: set WPC_DATABASE_URL (the database of the running services)")
        return 2
    return asyncio.run(_main(args, enrollment, notifier))
