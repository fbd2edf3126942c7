"""One PCP-notified measure: computed by the notifier, the same number in both APIs.

The enrollment store makes two TOC candidates and enrolls them; their outbox records
(`enrollment.candidates`, `enrollment.events`) are fed to the notifier as its consumer
would; the notifier tells the one PCP it knows of (a health plan roster entry) and
publishes its figure (`notifier.measures`); the enrollment service's handler takes that
record (`enrollment_svc.reported`). Both APIs then say 1 of 2, 0.5. Real PostgreSQL and
receivers; one database stands for both services' (in production they may differ, and
only Kafka joins them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.api import enrollment_router
from enrollment_svc.reported import MeasureHandler
from enrollment_svc.store import EnrollmentStore
from notifier.api import notifier_router
from notifier.measures import publish_changed
from schemas.measure import PcpNotifiedV1
from services.auth import User, Users
from services.db import create_engine
from tests.integration.test_enrollment_api import pt, toc_enrollee
from tests.integration.test_enrollment_store import rules
from tests.integration.test_notifier_flow import TOPICS, Rig, rig_factory

_ = rig_factory  # a fixture, imported for pytest

MEASURES = "notifications.measures"
OPS = {"Authorization": "Bearer tok-ops"}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


def _records(rows: list[tuple[str, str, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(topic=topic, partition=0, offset=i, timestamp=0, timestamp_type=0, key=key.encode(),
                       value=payload, checksum=None, serialized_key_size=len(key), serialized_value_size=len(payload),
                       headers=())
        for i, (topic, key, payload) in enumerate(rows)
    ]


async def _outbox(engine: AsyncEngine, topic: str) -> list[tuple[str, str, bytes]]:
    async with engine.begin() as conn:
        rows = (await conn.execute(text("SELECT topic, key, payload FROM outbox WHERE topic = :t ORDER BY id"),
                                   {"t": topic})).all()
        await conn.execute(text("DELETE FROM outbox WHERE topic = :t"), {"t": topic})  # as the relay does
    return [(r.topic, r.key, bytes(r.payload)) for r in rows]


async def test_both_apis_report_the_notifiers_pcp_notified_figure(engine: AsyncEngine, rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    store = EnrollmentStore(rules())
    known = await toc_enrollee(engine, store, "P-1", "91000001A", pt(20, 12))
    unknown = await toc_enrollee(engine, store, "P-2", "91000002A", pt(20, 12))
    assert known.candidate_id and unknown.candidate_id
    # The health plan attributes the first enrollee to the clinic; nobody knows the second's PCP.
    async with rig.engine.begin() as conn:
        await conn.execute(text("INSERT INTO roster (member_id, practice_id, effective_from, source) "
                                "VALUES ('91000001A', 'clinic', '2026-01-01', 'plan')"))
    # What the enrollment service published reaches the notifier, as its consumer hands it over.
    handed = (("enrollment.candidates", TOPICS.candidates), ("enrollment.events", TOPICS.enrollment_events))
    for topic, theirs in handed:
        for _, _, payload in await _outbox(engine, topic):
            await rig.handler.apply(theirs, payload)
    rig.clock.now = pt(21, 9).astimezone(dt.UTC)
    await rig.deliver(rounds=3)

    at = rig.clock.now
    assert await publish_changed(rig.engine, MEASURES, rig.cfg.timezone, at) == 1
    assert await publish_changed(rig.engine, MEASURES, rig.cfg.timezone, at) == 0  # nothing changed since
    published = await _outbox(rig.engine, MEASURES)
    assert [PcpNotifiedV1.model_validate_json(payload).share for _, _, payload in published] == [0.5]
    await MeasureHandler(engine)(_records(published))

    users = Users({hashlib.sha256(b"tok-ops").hexdigest(): User("olga.ops", frozenset({"ops"}))})
    notifier_app, enrollment_app = FastAPI(), FastAPI()
    for app in (notifier_app, enrollment_app):
        app.state.users = users
    notifier_app.include_router(notifier_router(rig.engine, rig.cfg, clock=rig.clock))
    enrollment_app.include_router(enrollment_router(engine, store))
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=notifier_app), base_url="http://n") as notifier,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=enrollment_app), base_url="http://e") as enrollment,
    ):
        theirs = (await notifier.get("/v1/measures/pcp-notified", headers=OPS)).json()
        ours = (await enrollment.get("/v1/measures", params={"month": "2026-11", "program": "TOC"},
                                     headers=OPS)).json()["programs"]["TOC"]
    assert theirs == [{"program": "TOC", "month": "2026-11", "enrolled": 2, "pcp_notified": 1, "share": 0.5}]
    assert ours["enrolled"] == 2
    assert ours["pcp_notified_share"] == theirs[0]["share"] == 0.5
    figure = ours["pcp_notified"]
    assert (figure["source"], figure["enrolled"], figure["notified"]) == ("notifier", 2, 1)
    assert figure["month_timezone"] == rig.cfg.timezone

    # An older figure delivered late (a redelivery, a second notifier) does not replace the newer one.
    topic, key, payload = published[0]
    stale = PcpNotifiedV1.model_validate_json(payload).model_copy(
        update={"notified": 0, "share": 0.0, "computed_at": at - dt.timedelta(hours=1)}
    )
    await MeasureHandler(engine)(_records([(topic, key, stale.model_dump_json().encode())]))
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT share FROM reported_measure WHERE program = 'TOC'")) == 0.5
