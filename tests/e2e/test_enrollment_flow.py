"""From MLLP in to `enrollment.candidates` out: the listener, two enrollment service
instances in one consumer group, the real broker and PostgreSQL.

A patient's third inpatient admission in six months (with a substance use disorder on
the chart) reaches the care team as exactly one TOC candidate, even though the events
are spread over two hospitals, one is sent twice, and two instances consume them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from enrollment_svc.service import EnrollmentService
from enrollment_svc.settings import EnrollmentSettings
from schemas.enrollment import EnrollmentCandidateV1, EnrollmentEventV1
from services.auth import Users
from services.embedded import free_port
from tests.adt_builder import adt
from tests.conftest import Broker
from tests.e2e.conftest import StartListener, listener_values
from tests.e2e.helpers import ack_code, db_fetch
from tests.integration.test_enrollment_store import rules
from tests.kafka_util import SESSION_TIMEOUT_S, read_topic
from wpc.settings import SystemSettings
from wpc.tools.send import MllpClient

PT = dt.timezone(dt.timedelta(hours=-8))


async def _until_processed(database_url: str, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await db_fetch(database_url, "SELECT count(*) AS n FROM processed_event"))[0]["n"] < n:
        assert time.monotonic() < deadline, "the enrollment service did not apply the history in time"
        await asyncio.sleep(0.1)


def _feed(now: dt.datetime) -> list[bytes]:
    """Two past stays at two hospitals, then today's admission at a participating one."""
    messages = []
    for n, (facility, days) in enumerate((("STMARY", 120), ("COUNTYGEN", 45)), start=1):
        admit = now - dt.timedelta(days=days)
        out = admit + dt.timedelta(days=2)
        mrn = "S-77" if facility == "STMARY" else "C-55"
        messages.append(adt("A01", facility=facility, mrn=mrn, visit=f"E2E{n}", at=admit, admit=admit))
        messages.append(adt("A03", facility=facility, mrn=mrn, visit=f"E2E{n}", at=out, admit=admit, discharge=out))
    admit = now - dt.timedelta(minutes=30)
    messages.append(adt("A01", facility="COUNTYGEN", mrn="C-55", visit="E2E3", at=admit, admit=admit,
                        dx=("F10.20", "J44.1")))
    return messages


async def test_mllp_to_one_candidate_with_two_instances_in_one_group(
    start_listener: StartListener, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    enrollment_topics = {
        "topic_enrollment_candidates": f"enrollment.candidates.{suffix}",
        "topic_enrollment_events": f"enrollment.events.{suffix}",
    }
    feed = _feed(dt.datetime.now(PT))

    def enrollment_settings() -> EnrollmentSettings:
        return SystemSettings.of(
            **listener_values(database_url, broker.bootstrap, topics), enrollment_http_port=free_port(),
            enrollment_group_id=f"wpc-enrollment-{suffix}", expiry_interval_s=3600,
            kafka_session_timeout_s=SESSION_TIMEOUT_S, **enrollment_topics,
        ).enrollment

    async with (
        start_listener() as listener,
        EnrollmentService(enrollment_settings(), users=Users({}), rules=rules()) as first,
        EnrollmentService(enrollment_settings(), users=Users({}), rules=rules()) as second,
    ):
        client = await MllpClient.connect("127.0.0.1", listener.endpoints.mllp_port)
        try:
            acks = [await client.send(m, timeout=15) for m in feed[:-1]]
            # The past stays are history by the time of today's admission, as in life: the two
            # hospitals' patients may sit on partitions of different instances, so without this
            # wait today's admission could be decided before last spring's stay is applied.
            await _until_processed(database_url, len(feed) - 1)
            acks.append(await client.send(feed[-1], timeout=15))
            acks.append(await client.send(feed[-1], timeout=15))  # the hospital resends the admission
        finally:
            await client.close()
        assert [ack_code(a) for a in acks] == ["AA"] * len(acks)

        candidates = await read_topic(broker.bootstrap, enrollment_topics["topic_enrollment_candidates"], expect=1,
                                      timeout_s=40, settle_s=2.0)
        # Both instances joined one group and consumed: between them every event was applied once.
        processed = await db_fetch(database_url, "SELECT count(*) AS n FROM processed_event")
        assert processed[0]["n"] == len(feed)
        assert first.consumer.running and second.consumer.running
        # The group shares the partitions out: never the same one to both instances.
        assert not first.consumer.assigned & second.consumer.assigned
        assert first.consumer.assigned | second.consumer.assigned

    assert len(candidates) == 1
    candidate = EnrollmentCandidateV1.model_validate_json(candidates[0].value)
    assert candidate.program == "TOC"
    assert candidate.trigger is not None and candidate.trigger.visit_number == "E2E3"
    # The person spans both hospitals: linked by the Medi-Cal id in PID-3.
    linked = {(i.assigning_authority, i.value) for i in candidate.identifiers}
    assert linked == {("STMARY", "S-77"), ("COUNTYGEN", "C-55")}
    assert candidates[0].key == str(candidate.person_id).encode()
    encounters = await db_fetch(database_url, "SELECT count(*) AS n, count(DISTINCT person_id) AS p FROM encounter")
    assert (encounters[0]["n"], encounters[0]["p"]) == (3, 1)
    events = await read_topic(broker.bootstrap, enrollment_topics["topic_enrollment_events"], expect=2, timeout_s=20)
    assert [EnrollmentEventV1.model_validate_json(e.value).to_status for e in events] == ["queued", "pending"]
