"""`wpc listener`, `wpc enrollment`, `wpc notifier`, `wpc web`: one service against configured
PostgreSQL and Kafka (the web app: against the services' APIs), until SIGINT/SIGTERM (then
the service's own drain).

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
from services.settings import S
from wpc import preflight

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--migrate", action="store_true", help="apply migrations before starting")


def run(args: argparse.Namespace) -> int:
    # Imported here: `wpc listener` need not load the notifier's channels, nor the reverse.
    if args.command == "listener":
        from adt_listener.service import Listener
        from adt_listener.settings import ListenerSettings

        return serve_one("listener", ListenerSettings, Listener, migrate=args.migrate)
    if args.command == "enrollment":
        from enrollment_svc.service import EnrollmentService
        from enrollment_svc.settings import EnrollmentSettings

        return serve_one("enrollment", EnrollmentSettings, EnrollmentService, migrate=args.migrate)
    if args.command == "web":
        from webapp.service import WebApp
        from webapp.settings import WebSettings

        return serve_one("web", WebSettings, WebApp, migrate=False)
    from notifier.service import NotifierService
    from notifier.settings import NotifierSettings

    return serve_one("notifier", NotifierSettings, NotifierService, migrate=args.migrate)


def serve_one(
    command: str, model: type[S], service: Callable[[S], AbstractAsyncContextManager[object]], *, migrate: bool
) -> int:
    """Run ``service`` with its settings (``model``, built once here) until SIGINT/SIGTERM, then
    its own drain, bounded by WPC_SHUTDOWN_TIMEOUT_S."""
    settings = preflight.checked_settings(command, model)  # one line per mistake, before anything starts
    logs.configure(settings.log_level, settings.log_json)

    async def main(shutdown: lifecycle.Shutdown) -> None:
        stop = shutdown.install()
        if migrate:
            await db.migrate_url(settings.database_url)
        async with service(settings):
            await stop.wait()
            log.info("signal received: draining (at most %.0f s)", settings.shutdown_timeout_s)
            shutdown.stage = f"stopping the {command}"

    return lifecycle.run_until_stopped(command, main, settings.shutdown_timeout_s)
