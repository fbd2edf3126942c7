"""End to end: a burst of multi-hospital patients, every message at once, decides as in order.

24 patients, each with history at two or three hospitals (one Medi-Cal id, or an A40
merging an old MRN), and today's admission or ED visit: TOC patients, SUD-ENS patients,
patients for whom TOC wins over SUD-ENS by priority only with the whole history, and
patients who qualify for nothing. Their messages are shuffled and sent all at once,
pipelined over four MLLP connections, to a listener; two enrollment service instances
in one consumer group apply them from the real broker. The candidates they end with
(program, status, triggering visit, recorded decision) must be those the in-order feed
makes: the same events applied through the store one at a time in event order, on the
same database, before the services start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from enrollment_svc.service import EnrollmentService
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import EnrollmentStore
from schemas.enrollment import EnrollmentCandidateV1
from services.auth import Users
from services.db import create_engine
from services.embedded import free_port
from tests.adt_builder import adt, event
from tests.conftest import Broker
from tests.e2e.conftest import StartListener, listener_values
from tests.e2e.helpers import ack_code, db_fetch, eventually
from tests.integration.test_arrival_order import candidates
from tests.integration.test_enrollment_store import rules
from tests.kafka_util import SESSION_TIMEOUT_S, read_topic
from wpc.settings import SystemSettings
from wpc.tools.send import MllpClient

PT = dt.timezone(dt.timedelta(hours=-8))
CONNECTIONS = 4


def _stay(at: dt.datetime, facility: str, mrn: str, visit: str, mc: str | None, dx: tuple[str, ...] = (),
          discharged: bool = True) -> list[tuple[dt.datetime, bytes]]:
    out = at + dt.timedelta(days=2)
    msgs = [(at, adt("A01", facility=facility, mrn=mrn, visit=visit, at=at, admit=at, dx=dx, medi_cal_id=mc))]
    if discharged:
        msgs.append((out, adt("A03", facility=facility, mrn=mrn, visit=visit, at=out, admit=at, discharge=out, dx=dx,
                              medi_cal_id=mc)))
    return msgs


def _ed(at: dt.datetime, facility: str, mrn: str, visit: str, mc: str) -> list[tuple[dt.datetime, bytes]]:
    return [(at, adt("A04", facility=facility, mrn=mrn, visit=visit, patient_class="E", at=at, admit=at,
                     dx=("F11.20",), medi_cal_id=mc))]


def population(now: dt.datetime) -> list[tuple[dt.datetime, bytes]]:
    """(event time, message) of every patient; each patient's times distinct from everyone's."""
    msgs: list[tuple[dt.datetime, bytes]] = []
    for i in range(24):
        kind = i % 6
        mc = f"96{i:06d}M"
        today = now - dt.timedelta(hours=2, minutes=i)
        ago = [now - dt.timedelta(days=d, minutes=i) for d in (200, 120, 60, 45, 20)]
        if kind in (0, 1):  # TOC: stays at two other hospitals, today's admission with SUD
            msgs += _stay(ago[1], "STMARY", f"S{i}", f"S{i}-1", mc)
            msgs += _stay(ago[3], "PSYCHHOSP", f"P{i}", f"P{i}-1", mc)
            msgs += _stay(today, "COUNTYGEN", f"C{i}", f"C{i}-1", mc, ("F10.20",), discharged=False)
        elif kind == 2:  # SUD-ENS: three SUD-related ED visits at three hospitals, the last today
            msgs += _ed(ago[0], "PSYCHHOSP", f"P{i}", f"P{i}-1", mc)
            msgs += _ed(ago[2], "STMARY", f"S{i}", f"S{i}-1", mc)
            msgs += _ed(today, "COUNTYGEN", f"C{i}", f"C{i}-1", mc)
        elif kind == 3:  # both: SUD-ENS on part of the history, TOC (first by priority) on all of it
            msgs += _ed(ago[0], "PSYCHHOSP", f"P{i}", f"P{i}-1", mc)
            msgs += _ed(ago[2], "PSYCHHOSP", f"P{i}", f"P{i}-2", mc)
            msgs += _ed(ago[4], "STMARY", f"S{i}", f"S{i}-0", mc)
            msgs += _stay(ago[1], "STMARY", f"S{i}", f"S{i}-1", mc)
            msgs += _stay(ago[3], "STMARY", f"S{i}", f"S{i}-2", mc)
            msgs += _stay(today, "COUNTYGEN", f"C{i}", f"C{i}-1", mc, ("F10.20",), discharged=False)
        elif kind == 4:  # an A40 folds an old MRN's two stays into today's (no Medi-Cal id to link them)
            msgs += _stay(ago[1], "COUNTYGEN", f"OLD{i}", f"O{i}-1", None)
            msgs += _stay(ago[3], "COUNTYGEN", f"OLD{i}", f"O{i}-2", None)
            merged = now - dt.timedelta(days=1, minutes=i)
            msgs.append((merged, adt("A40", facility="COUNTYGEN", mrn=f"NEW{i}", prior_mrn=f"OLD{i}", visit=None,
                                     at=merged, medi_cal_id=None)))
            msgs += _stay(today, "COUNTYGEN", f"NEW{i}", f"N{i}-1", None, ("Z59.00",), discharged=False)
        else:  # nothing: one earlier stay is not enough
            msgs += _stay(ago[2], "STMARY", f"S{i}", f"S{i}-1", mc)
            msgs += _stay(today, "COUNTYGEN", f"C{i}", f"C{i}-1", mc, ("F10.20",), discharged=False)
    return msgs


async def outcome(engine: Any) -> list[tuple[Any, ...]]:
    return sorted(
        ((c["program"], c["status"], c["facility"], c["visit_number"], c["decision"])
         for c in await candidates(engine) if c["status_reason"] != "superseded: facts arrived late"),
        key=repr,
    )


@pytest.mark.slow  # 10-30 s on a shared 2-core machine
async def test_a_burst_over_several_connections_and_two_instances_decides_as_in_order(
    start_listener: StartListener, database_url: str, broker: Broker, topics: dict[str, str]
) -> None:
    now = dt.datetime.now(PT)
    feed = population(now)
    # The in-order feed, through the store, on this database: what the services must end with.
    engine = create_engine(database_url, pool_size=2)
    store = EnrollmentStore(rules())
    try:
        async with engine.begin() as conn:
            await store.sync_capacity(conn)
        for _, raw in sorted(feed, key=lambda m: m[0]):
            async with engine.begin() as conn:
                await store.apply_adt_event(conn, event(raw), dt.datetime.now(dt.UTC))
        expected = await outcome(engine)
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE outbox, candidate_transition, candidate, encounter_event, encounter, "
                                    "patient_flag, identity_link, identity, person, processed_event, feed_finding "
                                    "CASCADE"))
    finally:
        await engine.dispose()
    assert sorted(c[0] for c in expected) == ["SUD-ENS"] * 4 + ["TOC"] * 16  # what the population is made of

    suffix = uuid.uuid4().hex[:8]
    enrollment_topics = {
        "topic_enrollment_candidates": f"enrollment.candidates.{suffix}",
        "topic_enrollment_events": f"enrollment.events.{suffix}",
        "topic_notifications_measures": f"notifications.measures.{suffix}",
    }

    def enrollment_settings() -> EnrollmentSettings:
        return SystemSettings.of(
            **listener_values(database_url, broker.bootstrap, topics), enrollment_http_port=free_port(),
            enrollment_group_id=f"wpc-enrollment-{suffix}", expiry_interval_s=3600,
            kafka_session_timeout_s=SESSION_TIMEOUT_S, **enrollment_topics,
        ).enrollment

    messages = [raw for _, raw in feed]
    random.Random(12).shuffle(messages)
    async with (
        start_listener() as listener,
        EnrollmentService(enrollment_settings(), users=Users({}), rules=rules()) as first,
        EnrollmentService(enrollment_settings(), users=Users({}), rules=rules()) as second,
    ):
        clients = [await MllpClient.connect("127.0.0.1", listener.endpoints.mllp_port) for _ in range(CONNECTIONS)]
        try:
            shares = [messages[i::CONNECTIONS] for i in range(CONNECTIONS)]
            acks = await asyncio.gather(*(c.send_many(s, timeout=30) for c, s in zip(clients, shares, strict=True)))
        finally:
            for c in clients:
                await c.close()
        assert [ack_code(a) for batch in acks for a in batch] == ["AA"] * len(messages)

        async def applied() -> bool:
            rows = await db_fetch(database_url, "SELECT count(*) AS n FROM processed_event")
            return bool(rows[0]["n"] == len(messages))

        await eventually(applied, 60, "the enrollment instances did not apply every event", interval_s=0.2)
        assert first.consumer.assigned and second.consumer.assigned
        assert not first.consumer.assigned & second.consumer.assigned
        engine = create_engine(database_url, pool_size=2)
        try:
            found = await outcome(engine)
        finally:
            await engine.dispose()
        published = await read_topic(broker.bootstrap, enrollment_topics["topic_enrollment_candidates"],
                                     expect=len(expected), timeout_s=30)
    assert found == expected
    # Every candidate of the outcome reached the care teams' topic (a superseded one did too, and
    # its withdrawal follows it on enrollment.events).
    on_topic = {(c.program, c.trigger.facility, c.trigger.visit_number)
                for c in (EnrollmentCandidateV1.model_validate_json(r.value) for r in published) if c.trigger}
    assert {(program, facility, visit) for program, _, facility, visit, _ in found} <= on_topic
