"""Composition root of the enrollment service.

`EnrollmentService` builds everything from `EnrollmentSettings` (engine, rules, store, the
`adt.events` consumer and its parking, the outbox relay, the expiry sweeper, the care
team's API and the parked records' API) and owns their lifecycle as one async context.
Leaving it is the SIGTERM drain: stop the API, stop consuming (the batch in hand
finishes and its offsets are committed), last relay publish, close.

The service owns its outbox (`services.outbox.Outbox`): its rows of the ``outbox`` table
carry its name and its topics only (enrollment.candidates, enrollment.events,
enrollment.deadletter), and its relay, under a lock key of its own, publishes them and
nothing else, whichever other services share the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.api import enrollment_router
from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.reported import MeasureHandler
from enrollment_svc.rules import Rules, load_rules
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import EnrollmentStore, Topics
from services import apidocs, db, lifecycle
from services.auth import Users, load_users
from services.backlog import consumers_router
from services.bus import KafkaPublisher, Publisher
from services.consumer import ConsumerLoop
from services.health import Check, ops_router
from services.httpserver import HttpServer
from services.outbox import Outbox, OutboxRelay, stop_with_last_publish
from services.parking import Parking, Reapply, parking_router
from services.replay import retention_of

log = logging.getLogger(__name__)

EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "deploy" / "rules" / "wpc-rules.yaml"
_GAUGE_INTERVAL_S = 60.0
OUTBOX_LOCK_KEY = 3  # its relay's advisory lock (the listener's are 1 and 2, the notifier's 4)


def outbox_of(settings: EnrollmentSettings) -> Outbox:
    return Outbox.of(settings.service, settings.published_topics())


def rules_of(settings: EnrollmentSettings) -> Rules:
    if settings.rules_file is None:
        return load_rules(EXAMPLE_RULES)
    return load_rules(settings.rules_file, setting="WPC_RULES_FILE")


def parking_of(settings: EnrollmentSettings,
               engine: AsyncEngine, *, on_park: Callable[[], None] = lambda: None) -> Parking:
    """The parking of the `adt.events` consumer group (`services.parking`)."""
    return Parking(engine, settings.enrollment_group_id, settings.topic_enrollment_deadletter,
                   outbox=outbox_of(settings), on_park=on_park)


def redrive_handler(settings: EnrollmentSettings, engine: AsyncEngine) -> tuple[Parking, Reapply]:
    """What `wpc redrive` needs to apply this group's parked records again, outside the service."""
    store = EnrollmentStore(rules_of(settings), Topics(settings.topic_enrollment_candidates,
                                                       settings.topic_enrollment_events), outbox_of(settings))
    return parking_of(settings, engine), AdtEventHandler(engine, store, lanes=1).reapply


class EnrollmentService:
    def __init__(
        self,
        settings: EnrollmentSettings,
        *,
        engine: AsyncEngine | None = None,
        publisher: Publisher | None = None,
        users: Users | None = None,
        rules: Rules | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules or rules_of(settings)
        self.engine = engine or db.create_engine(settings.database_url, pool_size=settings.enrollment_lanes + 2)
        self.publisher: Publisher = publisher or KafkaPublisher.of(settings)
        self.outbox = outbox_of(settings)
        self.relay = OutboxRelay(
            self.engine, self.publisher, owner=self.outbox, lock_key=OUTBOX_LOCK_KEY,
            batch=settings.relay_batch_max, poll_interval_s=settings.relay_poll_interval_s,
            retention=retention_of(settings),
        )
        self.store = EnrollmentStore(
            self.rules, Topics(settings.topic_enrollment_candidates, settings.topic_enrollment_events), self.outbox
        )
        self.parking = parking_of(settings, self.engine, on_park=self.relay.wake)
        self.handler = AdtEventHandler(
            self.engine, self.store, lanes=settings.enrollment_lanes, on_commit=self.relay.wake, parking=self.parking,
            bulk_min=settings.enrollment_bulk_min,
        )
        self.consumer = ConsumerLoop(
            settings.kafka_bootstrap_servers, [settings.topic_adt_events], settings.enrollment_group_id, self.handler,
            max_lag=settings.consumer_max_lag, max_restarts=settings.consumer_max_restarts,
            restart_window_s=settings.consumer_restart_window_s,
            session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            client_options=settings.kafka_client_options(),
        )
        # The notifier's PCP-notified figures, which the measures report (enrollment_svc.reported): a
        # group of their own, so this small topic never waits behind an adt.events backlog.
        # Ready means both consumers are: the same bounds (restarts, lag), and both in /readyz.
        self.measures_consumer = ConsumerLoop(
            settings.kafka_bootstrap_servers, [settings.topic_notifications_measures],
            settings.measures_group_id(), MeasureHandler(self.engine),
            max_lag=settings.consumer_max_lag, max_restarts=settings.consumer_max_restarts,
            restart_window_s=settings.consumer_restart_window_s,
            session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
            fetch_max_wait_ms=500,  # monthly figures: no hurry, and fewer empty fetches when idle
            client_options=settings.kafka_client_options(),
        )
        app = FastAPI(title="WPC enrollment service", version="0.1.0", docs_url=None, redoc_url=None)
        apidocs.install(app)  # /docs without the internet
        app.state.users = users or (load_users(settings.users_file) if settings.users_file else Users({}))
        checks: dict[str, Check] = {"database": functools.partial(db.ping, self.engine), "broker": self.publisher.ping,
                                    f"consumer {self.consumer.group}": self.consumer.check,
                                    f"consumer {self.measures_consumer.group}": self.measures_consumer.check}
        app.include_router(ops_router(checks, ingest_checks=("database",)))
        app.include_router(enrollment_router(self.engine, self.store))
        app.include_router(parking_router(self.parking, self.handler.reapply))
        app.include_router(consumers_router((self.consumer, self.measures_consumer)))
        self.app = app
        self.http = HttpServer(app, settings.http_host, settings.enrollment_http_port)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _expire_once(self) -> None:
        async with self.engine.begin() as conn:
            expired = await self.store.expire_due(conn, dt.datetime.now(dt.UTC))
        if expired:
            log.info("expired %d pending candidates", expired)
            self.relay.wake()

    async def __aenter__(self) -> EnrollmentService:
        async with self.engine.begin() as conn:
            await self.store.sync_capacity(conn)
        self._tasks = [
            asyncio.create_task(self.relay.run(self._stop), name="enrollment-relay"),
            asyncio.create_task(self.consumer.run(self._stop), name="enrollment-consumer"),
            asyncio.create_task(self.measures_consumer.run(self._stop), name="enrollment-measures-consumer"),
            asyncio.create_task(
                lifecycle.every(self._stop, self.settings.expiry_interval_s, self._expire_once, "expiry sweep"),
                name="enrollment-expiry",
            ),
            asyncio.create_task(
                lifecycle.every(self._stop, _GAUGE_INTERVAL_S, self.parking.refresh_gauge, "parked gauge"),
                name="enrollment-parked-gauge",
            ),
        ]
        await self.http.start()
        lifecycle.freeze_heap()  # short full collections, and fewer young ones (services.lifecycle)
        log.info("enrollment service up: http %s, rules %s", self.settings.enrollment_http_port,
                 self.rules.rule_version)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.stop()
        await stop_with_last_publish(self._stop, self._tasks, (self.relay,))
        await self.publisher.close()
        await self.engine.dispose()
        log.info("enrollment service stopped")
