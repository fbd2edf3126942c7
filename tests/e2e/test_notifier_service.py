"""The running notifier: Kafka topics in (real broker), receivers out (real HTTP and SMTP
servers), PostgreSQL in between. A receiver that is down, then answers 500, then comes back
gets every notification exactly once (a slow receiver is in the integration tests); a redelivered Kafka record and a
restart of the notifier do not send anything twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import httpx
from prometheus_client import REGISTRY

from notifier.config import config_from_text
from notifier.service import NotifierService
from notifier.settings import NotifierSettings
from schemas.enrollment import EnrollmentCandidateV1
from services.auth import Users
from services.bus import KafkaPublisher, Record
from services.embedded import free_port
from tests.conftest import Broker
from tests.e2e.helpers import db_fetch, eventually
from tests.integration.test_notifier_flow import SECRET, candidate, config_text, status
from tests.kafka_util import SESSION_TIMEOUT_S, read_topic
from tests.receivers import HttpReceiver, SmtpReceiver

TOKEN = "ops-token-for-tests"


def settings(database_url: str, broker: Broker, suffix: str) -> NotifierSettings:
    return NotifierSettings(
        database_url=database_url,
        kafka_bootstrap_servers=broker.bootstrap,
        topic_adt_events=f"adt.events.{suffix}",
        topic_enrollment_candidates=f"enrollment.candidates.{suffix}",
        topic_enrollment_events=f"enrollment.events.{suffix}",
        topic_notifications_deadletter=f"notifications.deadletter.{suffix}",
        notifier_group_id=f"wpc-notifier-{suffix}",
        notifier_http_port=free_port(),
        http_host="127.0.0.1",
        notifier_poll_interval_s=0.1,
        relay_poll_interval_s=0.05,
        kafka_session_timeout_s=SESSION_TIMEOUT_S,
    )


async def publish(broker: Broker, topic: str, models: list[Any]) -> None:
    publisher = KafkaPublisher(broker.bootstrap)
    try:
        await publisher.publish(
            [Record(topic, str(m.person_id).encode(), m.model_dump_json().encode()) for m in models]
        )
    finally:
        await publisher.close()


async def test_every_notification_arrives_exactly_once_through_outages(database_url: str, broker: Broker) -> None:
    suffix = uuid.uuid4().hex[:8]
    s = settings(database_url, broker, suffix)
    async with HttpReceiver(secret=SECRET) as hooks, SmtpReceiver() as smtp:
        text = config_text(hooks.url, smtp.port).replace(
            "retry: {max_attempts: 3, first_delay_s: 1, max_delay_s: 4, lease_s: 30}",
            "retry: {max_attempts: 20, first_delay_s: 0.1, max_delay_s: 0.4, lease_s: 5}")
        cfg = config_from_text(text)
        # The counter is the process's: other tests of this session (any running a notifier) add to it.
        delivered_before = REGISTRY.get_sample_value(
            "wpc_notifier_deliveries_total", {"channel": "webhook", "outcome": "delivered"}) or 0.0
        candidates: list[EnrollmentCandidateV1] = [candidate("TOC") for _ in range(6)]
        await hooks.stop()  # the care team's endpoint is down when the candidates come
        service = NotifierService(s, config=cfg, secrets={"S": SECRET}, users=Users.single(TOKEN, "ops",
                                                                                              frozenset({"ops"})))
        async with service:
            await publish(broker, s.topic_enrollment_candidates, candidates[:3])
            await eventually(lambda: _count(database_url, "SELECT count(*) AS n FROM delivery WHERE attempts > 0"),
                             30, "no attempt while the receiver was down", interval_s=0.1)
            await hooks.start()
            hooks.mode = "500"
            await publish(broker, s.topic_enrollment_candidates, candidates[3:] + candidates[:2])  # 2 redelivered
            await asyncio.sleep(1.0)
            hooks.mode = "ok"
            await hooks.wait_for(6, timeout=30)
            # The receiver has them; the sender records a round's outcomes right after.
            await eventually(lambda: _all_delivered(database_url, 6), 10, "outcomes not recorded", interval_s=0.1)
            # The ops API sees them all delivered.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.notifier_http_port}") as client:
                listed = (await client.get("/v1/deliveries", headers={"authorization": f"Bearer {TOKEN}"})).json()
                assert sorted(d["status"] for d in listed) == ["delivered"] * 6
                assert (await client.get("/v1/deliveries")).status_code == 401
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["checks"] == {
                    "database": "ok", "broker": "ok", f"consumer {s.notifier_group_id}": "ok"}
                metrics = (await client.get("/metrics")).text
                assert ('wpc_notifier_deliveries_total{channel="webhook",outcome="delivered"} '
                        f"{delivered_before + 6.0}") in metrics
        # A restart re-reads nothing it committed and sends nothing twice.
        async with NotifierService(s, config=cfg, secrets={"S": SECRET}, users=Users({})):
            await publish(broker, s.topic_enrollment_events, [status(candidates[0], "enrolled")])
            await eventually(lambda: _count(database_url, "SELECT count(*) AS n FROM delivery WHERE recipient_id = "
                                                          "'clinic' AND status = 'delivered'"),
                             30, "no PCP notice", interval_s=0.1)
            await asyncio.sleep(0.5)
    requests = [r for r in hooks.requests if r.path == "/hooks/toc"]
    assert len({r.headers["idempotency-key"] for r in requests}) == 6
    assert len(hooks.unique) == 7  # six candidates to the team, one enrollment to the PCP
    delivered = {json.loads(b)["notices"][0]["candidate_id"] for b in hooks.unique.values()}
    assert delivered == {str(c.candidate_id) for c in candidates}
    rows = await db_fetch(database_url, "SELECT count(*) AS n FROM notice")
    assert rows[0]["n"] == 7


async def _all_delivered(database_url: str, n: int) -> bool:
    rows = await db_fetch(database_url, "SELECT count(*) AS n FROM delivery WHERE status = 'delivered'")
    return int(rows[0]["n"]) == n


async def _count(database_url: str, sql: str) -> bool:
    return int((await db_fetch(database_url, sql))[0]["n"]) > 0


async def test_dead_letters_reach_their_topic(database_url: str, broker: Broker) -> None:
    suffix = uuid.uuid4().hex[:8]
    s = settings(database_url, broker, suffix)
    async with HttpReceiver(secret=SECRET) as hooks, SmtpReceiver() as smtp:
        cfg = config_from_text(config_text(hooks.url, smtp.port))
        hooks.mode = "410"
        async with NotifierService(s, config=cfg, secrets={"S": SECRET}, users=Users({})):
            cand = candidate("TOC")
            await publish(broker, s.topic_enrollment_candidates, [cand])
            (record,) = await read_topic(broker.bootstrap, s.topic_notifications_deadletter, expect=1)
    dead = json.loads(record.value)
    assert dead["recipient_id"] == "toc-team" and dead["attempts"] == 1 and "410" in dead["reason"]
    assert str(cand.candidate_id) not in record.value.decode()  # ids of deliveries and notices only
    assert dt.datetime.fromisoformat(dead["at"]).tzinfo is not None
