"""The embedded broker keeps topics in memory; nothing it loses is lost (issue 10 part 3).

The three services as `wpc up` runs them (listener, enrollment service, notifier, the demo
inbox), real PostgreSQL, a Tansu of the test's own that the test stops and starts again
(each start: an empty broker with a new cluster id, as under `wpc up`). A TOC patient's
history: every event is applied exactly once, and the candidate is made exactly once.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from adt_listener.service import Listener
from enrollment_svc.service import EnrollmentService
from notifier.service import NotifierService
from services.auth import Users
from services.httpserver import HttpServer
from tests.adt_builder import adt
from tests.conftest import Broker
from tests.e2e.helpers import ack_code, db_fetch, eventually, wait_outbox_empty
from tests.e2e.up_process import quiet_port
from tests.integration.test_enrollment_store import rules
from tests.kafka_util import SESSION_TIMEOUT_S
from wpc.demo_inbox import SECRET_ENV, demo_config, inbox_app
from wpc.settings import SystemSettings
from wpc.tools.send import MllpClient

PT = dt.timezone(dt.timedelta(hours=-8))


def system_settings(database_url: str, broker: Broker, **extra: object) -> SystemSettings:
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "database_url": database_url, "kafka_bootstrap_servers": broker.bootstrap,
        "topic_adt_events": f"adt.events.{suffix}", "topic_adt_deadletter": f"adt.deadletter.{suffix}",
        "topic_enrollment_candidates": f"enrollment.candidates.{suffix}",
        "topic_enrollment_events": f"enrollment.events.{suffix}",
        "topic_notifications_deadletter": f"notifications.deadletter.{suffix}",
        "enrollment_group_id": f"wpc-enrollment-{suffix}", "notifier_group_id": f"wpc-notifier-{suffix}",
        "mllp_host": "127.0.0.1", "mllp_port": quiet_port(), "http_host": "127.0.0.1",
        "listener_http_port": quiet_port(), "enrollment_http_port": quiet_port(),
        "notifier_http_port": quiet_port(), "demo_inbox_port": quiet_port(),
        "relay_poll_interval_s": 0.05, "expiry_interval_s": 3600, "replay_check_interval_s": 0.5,
        # Consumers rejoin sooner (SESSION_TIMEOUT_S); the settle wait stays above the session timeout.
        "kafka_session_timeout_s": SESSION_TIMEOUT_S, "replay_settle_s": SESSION_TIMEOUT_S + 1.0,
        **extra,
    }
    return SystemSettings.of(**values)


@asynccontextmanager
async def running_system(s: SystemSettings) -> AsyncIterator[Listener]:
    """What `wpc up` runs, minus the embedded servers (the test's own broker instead)."""
    secret = secrets.token_urlsafe(16)
    inbox = HttpServer(inbox_app(secret), "127.0.0.1", s.notifier.demo_inbox_port)
    await inbox.start()
    try:
        async with (
            Listener(s.listener) as listener,
            EnrollmentService(s.enrollment, users=Users({}), rules=rules()),
            NotifierService(s.notifier, users=Users({}),
                            config=demo_config(f"http://127.0.0.1:{s.notifier.demo_inbox_port}"),
                            secrets={SECRET_ENV: secret}),
        ):
            yield listener
    finally:
        await inbox.stop()


def toc_history(now: dt.datetime) -> list[bytes]:
    """One patient (one Kafka key, so one partition, in order): two past stays, then today's
    admission with a substance use disorder on the chart: a TOC candidate."""
    messages = []
    for n, days in enumerate((120, 45), start=1):
        admit = now - dt.timedelta(days=days)
        out = admit + dt.timedelta(days=2)
        messages.append(adt("A01", facility="COUNTYGEN", mrn="C-91", visit=f"LOSS{n}", at=admit, admit=admit))
        messages.append(adt("A03", facility="COUNTYGEN", mrn="C-91", visit=f"LOSS{n}", at=out, admit=admit,
                            discharge=out))
    admit = now - dt.timedelta(minutes=20)
    messages.append(adt("A01", facility="COUNTYGEN", mrn="C-91", visit="LOSS3", at=admit, admit=admit,
                        dx=("F10.20", "J44.1")))
    return messages


async def send(s: SystemSettings, messages: list[bytes]) -> None:
    client = await MllpClient.connect("127.0.0.1", s.listener.mllp_port)
    try:
        for m in messages:
            assert ack_code(await client.send(m, timeout=15)) in ("AA", "CA")
    finally:
        await client.close()


async def count(database_url: str, sql: str) -> int:
    return int((await db_fetch(database_url, sql))[0][0])


def updates(now: dt.datetime, n: int) -> list[bytes]:
    """A08s (patient information updated) for today's stay: more events on the same partition."""
    admit = now - dt.timedelta(minutes=20)
    return [adt("A08", facility="COUNTYGEN", mrn="C-91", visit="LOSS3", at=now - dt.timedelta(minutes=10 - i),
                admit=admit, dx=("F10.20", "J44.1")) for i in range(n)]


async def applied_exactly_once(database_url: str, s: SystemSettings, events: int) -> None:
    """Every event applied by the enrollment service and seen by the notifier, one candidate."""
    async def done() -> bool:
        return (
            await count(database_url, "SELECT count(*) FROM processed_event") == events
            and await count(database_url, "SELECT count(*) FROM notifier_processed WHERE topic = "
                            f"'{s.shared.topic_adt_events}'") == events
            and await count(database_url, "SELECT count(*) FROM notifier_processed WHERE topic = "
                            f"'{s.shared.topic_enrollment_candidates}'") == 1
        )

    await eventually(done, 60, "not every event was applied", interval_s=0.2)
    assert await count(database_url, "SELECT count(*) FROM candidate") == 1
    assert await count(database_url, "SELECT count(*) FROM encounter") == 3
    # Every group read everything: nothing is kept any more.
    await eventually(lambda: _kept_none(database_url), 30, "kept rows were not trimmed", interval_s=0.2)


async def _kept_none(database_url: str) -> bool:
    return await count(database_url, "SELECT (SELECT count(*) FROM adt_event_sent) + "
                                     "(SELECT count(*) FROM outbox_sent)") == 0


@pytest.mark.slow
async def test_restart_between_publish_and_consume_loses_nothing(database_url: str, own_broker: Broker) -> None:
    s = system_settings(database_url, own_broker)
    feed = toc_history(dt.datetime.now(PT))
    # Taken into custody and published; the consumers never read it (they were not running).
    async with Listener(s.listener):
        await send(s, feed)
        await wait_outbox_empty(database_url)
    assert await count(database_url, "SELECT count(*) FROM adt_event_sent") == len(feed)
    # `wpc up` starts again: its broker is a new one, empty.
    own_broker.stop()
    own_broker.start()
    async with running_system(s):
        await applied_exactly_once(database_url, s, len(feed))


@pytest.mark.slow
async def test_broker_killed_and_restarted_right_after_a_publish_loses_nothing(
    database_url: str, own_broker: Broker
) -> None:
    s = system_settings(database_url, own_broker)
    now = dt.datetime.now(PT)
    feed, later = toc_history(now), updates(now, 8)
    async with running_system(s):
        await send(s, feed[:-1])
        # The consumers are under way: they hold positions in the log that is about to go.
        await eventually(lambda: _counted(database_url, "SELECT count(*) FROM processed_event", len(feed) - 1),
                         60, "the history was not applied", interval_s=0.1)
        await send(s, feed[-1:])
        await wait_outbox_empty(database_url)  # published: the broker acknowledged it
        own_broker.stop()
        own_broker.start()
        # More of the same patient at once: on the new broker, past the offsets the consumers
        # had reached on the old one (what a consumer that has not rejoined yet would skip to).
        await send(s, later)
        await applied_exactly_once(database_url, s, len(feed) + len(later))


async def _counted(database_url: str, sql: str, n: int) -> bool:
    return await count(database_url, sql) >= n
