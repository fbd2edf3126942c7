"""The running enrollment service, fed `adt.events` on the real broker: an event it cannot
apply is parked and its dead letter reaches `enrollment.deadletter` while the others are
applied and /readyz stays green; a consumer whose database keeps going away turns /readyz
red, naming the consumer, and green again once it applies a batch."""

from __future__ import annotations

import base64
import datetime as dt
import gc
import uuid
from typing import Any

import httpx

from enrollment_svc.service import EnrollmentService
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import Applied, EnrollmentStore
from schemas.adt_event import AdtEventV1
from schemas.measure import PcpNotifiedV1
from schemas.parked_event import ParkedEventV1
from services import lifecycle
from services.auth import Users
from services.bus import KafkaPublisher, Record
from services.embedded import free_port
from tests.conftest import Broker
from tests.e2e.helpers import db_fetch, eventually
from tests.integration.test_enrollment_store import rules, stay
from tests.integration.test_parking import poisoned
from tests.kafka_util import SESSION_TIMEOUT_S, read_topic

TOKEN = "ops-token"


def settings(database_url: str, broker: Broker, **extra: Any) -> EnrollmentSettings:
    suffix = uuid.uuid4().hex[:8]
    return EnrollmentSettings(
        database_url=database_url, kafka_bootstrap_servers=broker.bootstrap, http_host="127.0.0.1",
        enrollment_http_port=free_port(), enrollment_group_id=f"wpc-enrollment-{suffix}",
        topic_adt_events=f"adt.events.{suffix}", topic_enrollment_candidates=f"enrollment.candidates.{suffix}",
        topic_enrollment_events=f"enrollment.events.{suffix}",
        topic_enrollment_deadletter=f"enrollment.deadletter.{suffix}",
        topic_notifications_measures=f"notifications.measures.{suffix}",
        relay_poll_interval_s=0.05, expiry_interval_s=3600, kafka_session_timeout_s=SESSION_TIMEOUT_S, **extra,
    )


async def publish(broker: Broker, topic: str, events: list[AdtEventV1]) -> None:
    publisher = KafkaPublisher(broker.bootstrap)
    try:
        await publisher.publish([Record(topic, (e.patient.patient_key or "k").encode(), e.model_dump_json().encode())
                                 for e in events])
    finally:
        await publisher.close()


async def processed(database_url: str) -> int:
    return int((await db_fetch(database_url, "SELECT count(*) AS n FROM processed_event"))[0]["n"])


async def test_a_parked_event_reaches_the_dead_letter_topic_and_the_rest_goes_on(
    database_url: str, broker: Broker
) -> None:
    s = settings(database_url, broker)
    events = stay(1, days_ago=10) + stay(2, days_ago=5, mrn="MRN0002") + stay(3, days_ago=2, mrn="MRN0003")
    events[2] = poisoned(events[2])
    async with EnrollmentService(s, users=Users.single(TOKEN, "olga", frozenset({"ops"})), rules=rules()):
        await publish(broker, s.topic_adt_events, events)
        await eventually(lambda: _is(processed(database_url), 5), 30, "the other events were not applied", 0.1)
        (letter,) = await read_topic(broker.bootstrap, s.topic_enrollment_deadletter, expect=1, timeout_s=30)
        dead = ParkedEventV1.model_validate_json(letter.value)
        assert dead.source_event_id == events[2].event_id and dead.consumer_group == s.enrollment_group_id
        assert dead.error_class == "CharacterNotInRepertoireError" and dead.topic == s.topic_adt_events
        assert AdtEventV1.model_validate_json(base64.b64decode(dead.value_base64)) == events[2]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.enrollment_http_port}") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.json()
            metrics = (await client.get("/metrics")).text
            assert (f'wpc_consumer_parked_total{{group="{s.enrollment_group_id}",topic="{s.topic_adt_events}"}} 1.0'
                    in metrics)
            assert (f'wpc_consumer_parked_waiting{{group="{s.enrollment_group_id}",topic="{s.topic_adt_events}"}} '
                    "1.0" in metrics)
            (parked,) = (await client.get("/v1/parked", headers={"authorization": f"Bearer {TOKEN}"})).json()
            assert parked["event_id"] == str(events[2].event_id)


class Unreachable(EnrollmentStore):
    """A database that drops the connection under every event while ``down``."""

    down = True

    async def apply_adt_event(self, conn: Any, event: AdtEventV1, now: dt.datetime) -> Applied:
        if self.down:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return await super().apply_adt_event(conn, event, now)


async def test_a_consumer_failing_again_and_again_turns_readiness_red_until_it_applies(
    database_url: str, broker: Broker
) -> None:
    s = settings(database_url, broker, consumer_max_restarts=2, consumer_restart_window_s=120)
    service = EnrollmentService(s, users=Users({}), rules=rules())
    store = Unreachable(service.rules, service.store.topics)
    service.handler.store = store  # the database goes away under the consumer's feet, again and again
    events = stay(1, days_ago=10)
    async with service, httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.enrollment_http_port}") as client:
        assert (await client.get("/readyz")).status_code == 200
        await publish(broker, s.topic_adt_events, events)

        async def red() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await eventually(red, 60, "/readyz stayed green while the consumer kept failing", 0.2)
        body = (await client.get("/readyz")).json()
        check = f"consumer {s.enrollment_group_id}"
        assert body["checks"] == {"database": "ok", "broker": "ok", check: "failing",
                                  f"consumer {s.measures_group_id()}": "ok"}
        assert s.enrollment_group_id in body["reasons"][check] and "restarts" in body["reasons"][check]
        assert (await client.get("/readyz/ingest")).status_code == 200  # the API still serves
        metrics = (await client.get("/metrics")).text
        assert f'wpc_consumer_restarts_total{{group="{s.enrollment_group_id}"}}' in metrics
        assert await db_fetch(database_url, "SELECT id FROM parked_event") == []  # not the events' fault

        store.down = False

        async def green() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(green, 60, "/readyz did not turn green once the consumer applied its batch", 0.2)
        assert await processed(database_url) == len(events)


async def test_the_measures_consumer_is_part_of_readiness(database_url: str, broker: Broker) -> None:
    """The `notifications.measures` consumer counts for /readyz as the `adt.events` one does: a
    figure PostgreSQL refuses (a NUL character in its zone), read again and again, turns it red,
    naming the measures group, while the main consumer stays ok."""
    s = settings(database_url, broker, consumer_max_restarts=1, consumer_restart_window_s=120)
    measures_check = f"consumer {s.measures_group_id()}"
    async with (EnrollmentService(s, users=Users({}), rules=rules()),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.enrollment_http_port}") as client):
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["checks"][measures_check] == "ok"
        figure = PcpNotifiedV1(
            event_id=uuid.uuid4(), program="TOC", month="2026-11", timezone="America/Los_Angeles\x00",
            enrolled=2, notified=1, share=0.5, computed_at=dt.datetime.now(dt.UTC),
        )
        publisher = KafkaPublisher(broker.bootstrap)
        try:
            await publisher.publish([Record(s.topic_notifications_measures, b"pcp_notified|TOC|2026-11",
                                            figure.model_dump_json().encode())])
        finally:
            await publisher.close()

        async def red() -> bool:
            return (await client.get("/readyz")).status_code == 503

        await eventually(red, 60, "/readyz stayed green while the measures consumer kept failing", 0.2)
        body = (await client.get("/readyz")).json()
        assert body["checks"] == {"database": "ok", "broker": "ok", f"consumer {s.enrollment_group_id}": "ok",
                                  measures_check: "failing"}
        assert s.measures_group_id() in body["reasons"][measures_check]
        assert "restarts" in body["reasons"][measures_check]


async def test_the_service_freezes_its_start_up_heap(database_url: str, broker: Broker) -> None:
    """What start-up built is out of the collector's sight once the service is up (full
    collections at full scale stalled every lane for 104-156 ms before)."""
    gc.unfreeze()  # whatever an earlier test in this process froze
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    held = [[n] for n in range(1000)]  # made before start-up ends, kept alive: frozen with it
    try:
        async with EnrollmentService(settings(database_url, broker), users=Users({}), rules=rules()):
            assert gc.get_freeze_count() > len(held)
            seen = {id(o) for generation in range(3) for o in gc.get_objects(generation=generation)}
            assert not any(id(x) in seen for x in held)  # frozen: no collection walks them
            assert gc.get_threshold() == (lifecycle.GC_YOUNG_THRESHOLD, 10, 10)  # and fewer young collections
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)
