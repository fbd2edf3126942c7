"""Composition root of the ADT listener.

`Listener` builds everything from `ListenerSettings` (engine, Kafka publisher, store, the two
relays, conformance worker, MLLP and HTTP servers) and owns their lifecycle as one
async context: entering starts them, leaving is the SIGTERM drain, in this order:

    stop accepting (MLLP, HTTP) → finish frames in hand, their ACKs written →
    store writes what is queued → relays make a last publish attempt → close

Two relays, each under a lock key of its own, publish the listener's topics and no
other (`services.outbox.Outbox`): ``events`` publishes `adt.events`, derived from the
stored messages (`adt_listener.events`); ``relay`` publishes the listener's rows of the
``outbox`` table, the dead letters of `adt.deadletter`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener import tls
from adt_listener.conformance import ConformanceWorker
from adt_listener.events import EVENT_BACKLOG, EVENT_QUEUE_CHANNEL, EVENT_RELAY_LEADER, DerivedEvents
from adt_listener.feed_report import router as feed_quality_router
from adt_listener.http import build_app
from adt_listener.ingest import Ingestor
from adt_listener.intake import IntakePolicy
from adt_listener.ops_api import ops_router
from adt_listener.senders import Senders, load_senders
from adt_listener.server import MllpLimits, MllpServer
from adt_listener.settings import ListenerSettings
from adt_listener.store import MessageStore, Topics
from services import db
from services.auth import Users, load_users
from services.bus import KafkaPublisher, Publisher
from services.httpserver import HttpServer
from services.outbox import Outbox, OutboxRelay, stop_with_last_publish
from services.replay import retention_of

log = logging.getLogger(__name__)

# Advisory lock keys of the relays (one leader each; the other services hold 3 and 4).
OUTBOX_LOCK_KEY = 1
EVENTS_LOCK_KEY = 2


def tls_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None:
        return None
    return tls.server_context(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)


@dataclass
class Endpoints:
    mllp_port: int
    http_port: int


class Listener:
    def __init__(
        self,
        settings: ListenerSettings,
        *,
        engine: AsyncEngine | None = None,
        publisher: Publisher | None = None,
        run_relay: bool = True,
        run_conformance: bool = True,
        users: Users | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or db.create_engine(settings.database_url)
        self.publisher: Publisher = publisher or KafkaPublisher.of(settings)
        self.senders: Senders = load_senders(settings.senders_file)
        policy = IntakePolicy(
            accepted_processing_ids=settings.processing_ids(),
            medi_cal_authorities=settings.medi_cal_authority_set(),
        )
        retention = retention_of(settings)
        self.outbox = Outbox.of(settings.service, settings.published_topics())
        self.relay = OutboxRelay(
            self.engine, self.publisher, owner=self.outbox, lock_key=OUTBOX_LOCK_KEY,
            batch=settings.relay_batch_max, poll_interval_s=settings.relay_poll_interval_s, retention=retention,
        )
        self.event_source = DerivedEvents(self.outbox.check(settings.topic_adt_events), policy)
        self.events = OutboxRelay(
            self.engine, self.publisher, owner=self.outbox,
            lock_key=EVENTS_LOCK_KEY, batch=settings.relay_batch_max, poll_interval_s=settings.relay_poll_interval_s,
            source=self.event_source, backlog_gauge=EVENT_BACKLOG, leader_gauge=EVENT_RELAY_LEADER,
            retention=retention, listen=(EVENT_QUEUE_CHANNEL, None),
        )
        self.store = MessageStore(
            self.engine,
            Topics(settings.topic_adt_events, settings.topic_adt_deadletter),
            max_batch=settings.commit_batch_max,
            linger_s=settings.commit_linger_ms / 1000.0,
            on_events=self.events.wake,
            on_dead_letters=self.relay.wake,
            outbox=self.outbox,
        )
        self.ingestor = Ingestor(self.store, policy, self.senders)
        self.mllp = MllpServer(
            self.ingestor, self.senders,
            limits=MllpLimits(
                max_frame_bytes=settings.mllp_max_frame_bytes,
                idle_timeout_s=settings.mllp_idle_timeout_s,
                read_timeout_s=settings.mllp_read_timeout_s,
                max_connections=settings.mllp_max_connections,
                first_frame_timeout_s=settings.mllp_first_frame_timeout_s,
                max_connections_per_address=settings.mllp_max_connections_per_address,
                reserved_slots=settings.mllp_reserved_slots,
            ),
            ssl_context=tls_context(settings),
        )
        self.conformance = (
            ConformanceWorker(self.engine, max_per_s=settings.conformance_max_per_s,
                              cpu_share=settings.conformance_cpu_share) if run_conformance else None
        )
        app = build_app(
            self.ingestor, self.senders,
            checks={"database": functools.partial(db.ping, self.engine), "broker": self.publisher.ping},
            max_body_bytes=settings.http_max_body_bytes or settings.mllp_max_frame_bytes,
            extra_routers=(
                feed_quality_router(self.engine, self.senders),
                ops_router(
                    lambda: self.engine, policy=policy, senders_file=settings.senders_file,
                    service=settings.service, deadletter_topic=settings.topic_adt_deadletter,
                    on_accepted=self.events.wake,
                ),
            ),
        )
        # The ops API's users (adt_listener.ops_api); POST /v1/adt keeps the senders' tokens.
        app.state.users = users or (load_users(settings.users_file) if settings.users_file else Users({}))
        self.http = HttpServer(app, settings.http_host, settings.listener_http_port)
        self._run_relay = run_relay
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.mllp.port, self.settings.listener_http_port)

    async def __aenter__(self) -> Listener:
        try:
            await self.store.start()
            if self._run_relay:
                self._tasks.append(asyncio.create_task(self.relay.run(self._stop), name="outbox-relay"))
                self._tasks.append(asyncio.create_task(self.events.run(self._stop), name="adt-events-relay"))
            if self.conformance is not None:
                self._tasks.append(asyncio.create_task(self.conformance.run(self._stop), name="conformance"))
            await self.mllp.start(self.settings.mllp_host, self.settings.mllp_port)
            await self.http.start()
        except BaseException:
            # A failed start (a port in use) must not leave tasks, worker processes and
            # connections behind: nobody calls __aexit__ after a failed __aenter__.
            await self.__aexit__(None, None, None)
            raise
        log.info("listener up: mllp %s, http %s", self.mllp.port, self.settings.listener_http_port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.mllp.stop()
        await self.http.stop()
        await self.store.stop()
        await stop_with_last_publish(self._stop, self._tasks, (self.events, self.relay))
        await self.event_source.aclose()
        if self.conformance is not None:
            await self.conformance.aclose()
        await self.publisher.close()
        await self.engine.dispose()
        log.info("listener stopped")
