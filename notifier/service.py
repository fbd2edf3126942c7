"""Composition root of the notifier.

`NotifierService` builds everything from `NotifierSettings` and the notification configuration
(engine, channels, the consumer of the three topics and its parking, the dispatcher, the
outbox relay for dead letters, the API and the parked records' API) and owns their
lifecycle as one async context. Leaving it is the
SIGTERM drain: stop the API, stop consuming (the batch in hand is committed), let the
sender finish the attempts in hand and record them, last relay publish, close.

The notifier owns its outbox (`services.outbox.Outbox`): its rows carry its name and its
topics only (notifications.deadletter, notifier.deadletter), and its relay, under a lock
key of its own, publishes them and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
from collections.abc import Callable, Mapping
from types import TracebackType

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier import measures
from notifier.api import notifier_router
from notifier.channels.base import Channel
from notifier.channels.email import EmailChannel
from notifier.channels.fhir import FhirChannel
from notifier.channels.webhook import WebhookChannel
from notifier.config import NotifyConfig, endpoints_of, load_config
from notifier.dispatcher import Dispatcher
from notifier.handler import NotifierHandler, Topics
from notifier.settings import NotifierSettings
from services import apidocs, db, lifecycle
from services.auth import Users, load_users
from services.backlog import consumers_router
from services.bus import KafkaPublisher, Publisher
from services.configfile import ConfigError
from services.consumer import ConsumerLoop
from services.health import Check, ops_router
from services.httpserver import HttpServer
from services.outbox import Outbox, OutboxRelay, stop_with_last_publish
from services.parking import Parking, Reapply, parking_router
from services.replay import retention_of

log = logging.getLogger(__name__)

_GAUGE_INTERVAL_S = 30.0


OUTBOX_LOCK_KEY = 4  # its relay's advisory lock (the listener's are 1 and 2, the enrollment service's 3)


def outbox_of(settings: NotifierSettings) -> Outbox:
    return Outbox.of(settings.service, settings.published_topics())


def config_of(settings: NotifierSettings) -> NotifyConfig:
    if settings.notify_file is None:
        raise ConfigError("WPC_NOTIFY_FILE is not set: the notifier needs its configuration "
                          "(example: deploy/notify/wpc-notify.yaml)")
    return load_config(settings.notify_file, setting="WPC_NOTIFY_FILE")


def topics_of(settings: NotifierSettings) -> Topics:
    return Topics(settings.topic_adt_events, settings.topic_enrollment_candidates,
                  settings.topic_enrollment_events, settings.topic_notifications_deadletter)


def parking_of(settings: NotifierSettings,
               engine: AsyncEngine, *, on_park: Callable[[], None] = lambda: None) -> Parking:
    """The parking of the notifier's consumer group (`services.parking`)."""
    return Parking(engine, settings.notifier_group_id, settings.topic_notifier_deadletter,
                   outbox=outbox_of(settings), on_park=on_park)


def redrive_handler(settings: NotifierSettings, engine: AsyncEngine, config: NotifyConfig) -> tuple[Parking, Reapply]:
    """What `wpc redrive` needs to apply this group's parked records again, outside the service."""
    return parking_of(settings, engine), NotifierHandler(engine, config, topics_of(settings)).reapply


def channels_for(cfg: NotifyConfig, secrets: Mapping[str, str]) -> dict[str, Channel]:
    smtp = cfg.smtp
    return {
        "webhook": WebhookChannel(),
        "fhir": FhirChannel(),
        "email": EmailChannel(
            host=smtp.host, port=smtp.port, sender=smtp.sender,
            username=secrets.get(smtp.username_env) if smtp.username_env else None,
            password=secrets.get(smtp.password_env) if smtp.password_env else None,
            starttls=smtp.starttls, use_tls=smtp.use_tls, timeout=smtp.timeout_s,
        ),
    }


class NotifierService:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        config: NotifyConfig | None = None,
        secrets: Mapping[str, str] | None = None,
        engine: AsyncEngine | None = None,
        publisher: Publisher | None = None,
        users: Users | None = None,
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or config_of(settings)
        secrets = os.environ if secrets is None else secrets
        endpoints = {r.id: endpoints_of(r, secrets) for r in (*self.config.care_teams, *self.config.practices)}
        self.channels = dict(channels) if channels is not None else channels_for(self.config, secrets)
        self.engine = engine or db.create_engine(settings.database_url, pool_size=8)
        self.publisher: Publisher = publisher or KafkaPublisher.of(settings)
        self.outbox = outbox_of(settings)
        self.relay = OutboxRelay(
            self.engine, self.publisher, owner=self.outbox, lock_key=OUTBOX_LOCK_KEY,
            batch=settings.relay_batch_max, poll_interval_s=settings.relay_poll_interval_s,
            retention=retention_of(settings),
        )
        topics = topics_of(settings)
        self.dispatcher = Dispatcher(
            self.engine, self.config, endpoints, self.channels, deadletter_topic=topics.deadletter,
            outbox=self.outbox, poll_interval_s=settings.notifier_poll_interval_s, on_deadletter=self.relay.wake,
        )
        self.parking = parking_of(settings, self.engine, on_park=self.relay.wake)
        self.handler = NotifierHandler(self.engine, self.config, topics, on_notice=self.dispatcher.wake,
                                       parking=self.parking)
        self.consumer = ConsumerLoop(
            settings.kafka_bootstrap_servers,
            list(settings.consumed_topics()),
            settings.notifier_group_id,
            self.handler,
            max_lag=settings.consumer_max_lag, max_restarts=settings.consumer_max_restarts,
            restart_window_s=settings.consumer_restart_window_s,
            session_timeout_ms=int(settings.kafka_session_timeout_s * 1000),
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            client_options=settings.kafka_client_options(),
        )
        app = FastAPI(title="WPC notifier", version="0.1.0", docs_url=None, redoc_url=None)
        apidocs.install(app)  # /docs without the internet
        app.state.users = users or (load_users(settings.users_file) if settings.users_file else Users({}))
        checks: dict[str, Check] = {"database": functools.partial(db.ping, self.engine), "broker": self.publisher.ping,
                                    f"consumer {self.consumer.group}": self.consumer.check}
        app.include_router(ops_router(checks, ingest_checks=("database",)))
        app.include_router(notifier_router(self.engine, self.config, self.dispatcher.wake))
        app.include_router(parking_router(self.parking, self.handler.reapply))
        app.include_router(consumers_router((self.consumer,)))
        self.app = app
        self.http = HttpServer(app, settings.http_host, settings.notifier_http_port)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _publish_measures(self) -> None:
        """Put the PCP-notified figures that changed on notifications.measures (notifier.measures)."""
        if await measures.publish_changed(self.engine, self.settings.topic_notifications_measures,
                                          self.config.timezone, dt.datetime.now(dt.UTC), self.outbox):
            self.relay.wake()

    async def __aenter__(self) -> NotifierService:
        self._tasks = [
            asyncio.create_task(self.relay.run(self._stop), name="notifier-relay"),
            asyncio.create_task(self.consumer.run(self._stop), name="notifier-consumer"),
            asyncio.create_task(self.dispatcher.run_planner(self._stop), name="notifier-planner"),
            asyncio.create_task(self.dispatcher.run_sender(self._stop), name="notifier-sender"),
            asyncio.create_task(
                lifecycle.every(self._stop, _GAUGE_INTERVAL_S, self.dispatcher.refresh_gauges, "notifier gauges"),
                name="notifier-gauges",
            ),
            asyncio.create_task(
                lifecycle.every(self._stop, _GAUGE_INTERVAL_S, self.parking.refresh_gauge, "parked gauge"),
                name="notifier-parked-gauge",
            ),
            asyncio.create_task(
                lifecycle.every(self._stop, self.settings.measure_publish_interval_s, self._publish_measures,
                                "PCP-notified measure"),
                name="notifier-measures",
            ),
        ]
        await self.http.start()
        lifecycle.freeze_heap()  # short full collections, and fewer young ones (services.lifecycle)
        log.info("notifier up: http %s, configuration %s+%s", self.settings.notifier_http_port,
                 self.config.version, self.config.digest)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.stop()
        await stop_with_last_publish(self._stop, self._tasks, (self.relay,))
        for channel in self.channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await self.publisher.close()
        await self.engine.dispose()
        log.info("notifier stopped")
