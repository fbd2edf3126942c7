"""The whole pipeline on the public samples: listener (MLLP), enrollment service and notifier
on the real PostgreSQL and broker. Every event the listener publishes reaches both
consumers (applied, or parked and said so), none stalls a partition, readiness tells the
truth, and a TOC patient sent after them all becomes a candidate and reaches the care team.

The stall of issue 10: 027_hapi_A14 (pending admit) and 044_lfh_A18 (merge patient
information) were acknowledged AA and then failed in the enrollment service for ever,
holding up every later event of their partitions, with /readyz green.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from adt_listener.ack import salvage_header
from adt_listener.service import Listener
from enrollment_svc.service import EnrollmentService
from notifier.config import config_from_text
from notifier.service import NotifierService
from services.auth import Users
from services.embedded import free_port
from tests.conftest import Broker
from tests.e2e.conftest import listener_values
from tests.e2e.helpers import ack_code, db_fetch, eventually
from tests.e2e.test_enrollment_flow import PT, _feed
from tests.integration.test_enrollment_store import rules
from tests.integration.test_notifier_flow import SECRET, config_text
from tests.kafka_util import SESSION_TIMEOUT_S
from tests.receivers import HttpReceiver, SmtpReceiver
from wpc.settings import SystemSettings
from wpc.tools.send import MllpClient

TOKEN = "ops-token"
PUBLISHED = "SELECT count(DISTINCT event_id) AS n FROM adt_message WHERE ack_code = 'AA' AND event_id IS NOT NULL"


def pipeline_settings(database_url: str, broker: Broker, topics: dict[str, str]) -> SystemSettings:
    suffix = uuid.uuid4().hex[:8]
    return SystemSettings.of(
        **listener_values(database_url, broker.bootstrap, topics),
        enrollment_http_port=free_port(), notifier_http_port=free_port(),
        enrollment_group_id=f"wpc-enrollment-{suffix}", notifier_group_id=f"wpc-notifier-{suffix}",
        topic_enrollment_candidates=f"enrollment.candidates.{suffix}",
        topic_enrollment_events=f"enrollment.events.{suffix}",
        topic_enrollment_deadletter=f"enrollment.deadletter.{suffix}",
        topic_notifier_deadletter=f"notifier.deadletter.{suffix}",
        topic_notifications_deadletter=f"notifications.deadletter.{suffix}",
        expiry_interval_s=3600, notifier_poll_interval_s=0.1, kafka_session_timeout_s=SESSION_TIMEOUT_S,
    )


async def send_all(port: int, messages: Sequence[bytes]) -> list[str]:
    """Send over one MLLP connection, in order; the ACK codes of those that get one (MSH-15
    NE and ER ask for none on success: their ACK is not waited for)."""
    codes = []
    async with await MllpClient.connect("127.0.0.1", port) as client:
        for raw in messages:
            if salvage_header(raw).accept_ack_type in ("NE", "ER"):
                await client.write(raw, timeout=15)
            else:
                codes.append(ack_code(await client.send(raw, timeout=15)))
    return codes


async def count(database_url: str, sql: str, *args: object) -> int:
    return int((await db_fetch(database_url, sql, *args))[0]["n"])


async def applied_by_both(database_url: str, s: SystemSettings, expected: int) -> bool:
    """Every published event has reached both consumers: applied (processed) or parked."""
    enrollment = await count(database_url, "SELECT count(*) AS n FROM processed_event")
    notifier = await count(database_url, "SELECT count(*) AS n FROM notifier_processed WHERE topic = $1",
                           s.shared.topic_adt_events)
    parked = await count(database_url, "SELECT count(*) AS n FROM parked_event")
    return enrollment + parked >= expected and notifier + parked >= expected


@asynccontextmanager
async def pipeline(s: SystemSettings, hooks_url: str, smtp_port: int) -> AsyncIterator[Listener]:
    users = Users.single(TOKEN, "olga", frozenset({"ops"}))
    cfg = config_from_text(config_text(hooks_url, smtp_port))
    async with (
        Listener(s.listener, run_conformance=False) as listener,
        EnrollmentService(s.enrollment, users=users, rules=rules()),
        NotifierService(s.notifier, config=cfg, secrets={"S": SECRET}, users=users),
    ):
        yield listener


async def test_every_sample_reaches_both_consumers_and_a_toc_patient_still_gets_through(
    database_url: str, broker: Broker, topics: dict[str, str], samples_dir: Path
) -> None:
    s = pipeline_settings(database_url, broker, topics)
    files = sorted((samples_dir / "messages").glob("*.hl7")) + sorted((samples_dir / "malformed").glob("*.hl7"))
    assert len(files) == 102
    async with HttpReceiver(secret=SECRET) as hooks, SmtpReceiver() as smtp:
        async with pipeline(s, hooks.url, smtp.port) as listener:
            port = listener.endpoints.mllp_port
            await send_all(port, [f.read_bytes() for f in files])
            # The listener has stored (or answered as a retransmission) every file.
            await eventually(lambda: _stored(database_url, len(files)), 30, "not every sample was stored",
                             interval_s=0.1)
            published = await count(database_url, PUBLISHED)
            assert published >= 60  # most samples are accepted (tests/unit/test_corpus.py)
            await eventually(lambda: applied_by_both(database_url, s, published), 60,
                             "an adt.events record did not reach the enrollment service or the notifier",
                             interval_s=0.2)
            assert await count(database_url, "SELECT count(*) AS n FROM parked_event") == 0
            assert await count(database_url, "SELECT count(*) AS n FROM processed_event") == published

            # A TOC patient after them all: three admissions in six months, SUD on the chart.
            feed = _feed(dt.datetime.now(PT))
            assert await send_all(port, feed[:-1]) == ["AA"] * (len(feed) - 1)
            await eventually(lambda: applied_by_both(database_url, s, published + len(feed) - 1), 30,
                             "the TOC patient's history was not applied", interval_s=0.1)
            assert await send_all(port, feed[-1:]) == ["AA"]
            await eventually(lambda: _toc_candidate(database_url), 30, "the TOC patient never became a candidate",
                             interval_s=0.1)
            await hooks.wait_for(1, timeout=30)  # the TOC care team is told
            assert {r.path for r in hooks.requests} == {"/hooks/toc"}

            for http_port in (s.enrollment.enrollment_http_port, s.notifier.notifier_http_port):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
                    ready = await client.get("/readyz")
                    assert ready.status_code == 200, ready.json()
                    assert set(ready.json()["checks"]) == {"database", "broker", *_consumer_checks(s, http_port)}
                    parked = await client.get("/v1/parked", headers={"authorization": f"Bearer {TOKEN}"})
                    assert parked.status_code == 200 and parked.json() == []


def _consumer_checks(s: SystemSettings, http_port: int) -> set[str]:
    """The service's consumer groups, each a readiness check (the enrollment service's second one
    reads `notifications.measures`)."""
    if http_port == s.enrollment.enrollment_http_port:
        return {f"consumer {s.enrollment.enrollment_group_id}", f"consumer {s.enrollment.measures_group_id()}"}
    return {f"consumer {s.notifier.notifier_group_id}"}


async def _stored(database_url: str, n: int) -> bool:
    return await count(database_url, "SELECT (SELECT count(*) FROM adt_message) + "
                                     "(SELECT count(*) FROM adt_duplicate) AS n") >= n


async def _count_is(database_url: str, sql: str, n: int) -> bool:
    return await count(database_url, sql) == n


async def _toc_candidate(database_url: str) -> bool:
    return await count(database_url, "SELECT count(*) AS n FROM candidate WHERE program = 'TOC'") == 1


@pytest.mark.parametrize("sample", ["027_hapi_A14.hl7", "044_lfh_A18.hl7"])
async def test_the_a14_and_a18_samples_are_applied_and_hold_nothing_up(
    database_url: str, broker: Broker, topics: dict[str, str], samples_dir: Path,
    sample: str,
) -> None:
    s = pipeline_settings(database_url, broker, topics)
    async with HttpReceiver(secret=SECRET) as hooks, SmtpReceiver() as smtp:
        async with pipeline(s, hooks.url, smtp.port) as listener:
            feed = _feed(dt.datetime.now(PT))
            raw = (samples_dir / "messages" / sample).read_bytes()
            assert await send_all(listener.endpoints.mllp_port, [raw, *feed[:-1]]) == ["AA"] * len(feed)
            await eventually(
                lambda: _count_is(database_url, "SELECT count(*) AS n FROM processed_event", len(feed)),
                30, f"{sample} or an event after it was not applied", interval_s=0.1)
