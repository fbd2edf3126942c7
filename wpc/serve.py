"""`wpc listener`, `wpc enrollment`, `wpc notifier`: one service against configured
PostgreSQL and Kafka, until SIGINT/SIGTERM (then the service's own drain).

The service packages hold their composition roots (`adt_listener.service.Listener`,
`enrollment_svc.service.EnrollmentService`, `notifier.service.NotifierService`); this
module is the command around each: check everything first (`wpc.preflight`: one line
per mistake, before anything starts), configure logging, optionally migrate, run.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from services import db, lifecycle, logs
from services.settings import Settings
from wpc import preflight

log = logging.getLogger(__name__)

ServiceFactory = Callable[[Settings], AbstractAsyncContextManager[object]]


def _factory(command: str) -> ServiceFactory:
    # Imported here: `wpc listener` need not load the notifier's channels, nor the reverse.
    if command == "listener":
        from adt_listener.service import Listener

        return Listener
    if command == "enrollment":
        from enrollment_svc.service import EnrollmentService

        return EnrollmentService
    from notifier.service import NotifierService

    return NotifierService


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--migrate", action="store_true", help="apply migrations before starting")


def run(args: argparse.Namespace) -> int:
    return serve_one(args.command, _factory(args.command), migrate=args.migrate)


def serve_one(command: str, service: ServiceFactory, *, migrate: bool) -> int:
    """Run ``service`` until SIGINT/SIGTERM. Exit status 2 when unconfigured."""
    settings = preflight.checked_settings(command)  # one line per mistake, before anything starts
    logs.configure(settings.log_level, settings.log_json)
    if not settings.database_url or not settings.kafka_bootstrap_servers:
        print(f"wpc {command}: set WPC_DATABASE_URL and WPC_KAFKA_BOOTSTRAP_SERVERS (or use `wpc up`)")
        return 2

    async def main() -> None:
        stop = lifecycle.stop_on_signals()
        if migrate:
            await db.migrate_url(settings.database_url)
        async with service(settings):
            await stop.wait()
            log.info("signal received: draining")

    lifecycle.run(main())
    return 0
