"""Parking against the real PostgreSQL: an event a consumer cannot apply is set aside
(kept, dead-lettered, counted, logged without its content) and the rest of its batch is
applied once; a re-drive after a fix applies it; transient trouble parks nothing.

The poison events are real ones the code cannot store: a NUL character in a field
(PostgreSQL text and jsonb refuse U+0000; HL7 v2 does not forbid it, JSON carries it).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.store import Applied, EnrollmentStore
from notifier.config import config_from_text
from notifier.handler import NotifierHandler
from schemas.adt_event import AdtEventV1
from schemas.parked_event import ParkedEventV1
from services.auth import Users
from services.consumer import is_transient
from services.db import create_engine
from services.outbox import Outbox
from services.parking import Parking, parking_router
from tests.integration.test_enrollment_batch import counts, record
from tests.integration.test_enrollment_store import NOW, rules, stay
from tests.integration.test_notifier_flow import TOPICS, candidate, config_text

GROUP = "wpc-enrollment-test"
DEADLETTER = "enrollment.deadletter"
POISON_VISIT = "PV\x00SECRET-VISIT"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    async with eng.begin() as conn:
        await EnrollmentStore(rules()).sync_capacity(conn)
    yield eng
    await eng.dispose()


def poisoned(ev: AdtEventV1) -> AdtEventV1:
    assert ev.visit is not None
    return ev.model_copy(update={"visit": ev.visit.model_copy(update={"visit_number": POISON_VISIT})})


def parked_total(group: str, topic: str) -> float:
    return REGISTRY.get_sample_value("wpc_consumer_parked_total", {"group": group, "topic": topic}) or 0.0


def waiting(group: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value("wpc_consumer_parked_waiting", {"group": group, "topic": topic})


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


class BrokenStore(EnrollmentStore):
    """Fails applying one event (by control id) for as long as ``broken``: a bug, then its fix."""

    def __init__(self, control_id: str) -> None:
        super().__init__(rules())
        self.control_id = control_id
        self.broken = True

    async def apply_adt_event(self, conn: Any, event: AdtEventV1, now: dt.datetime) -> Applied:
        applied = await super().apply_adt_event(conn, event, now)
        if self.broken and event.control_id == self.control_id:
            raise KeyError("a bug")
        return applied


async def test_a_poison_event_is_parked_and_the_rest_of_its_batch_applied_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    events = stay(1, days_ago=10) + stay(2, days_ago=5, mrn="MRN0002")
    events[2] = poisoned(events[2])  # the second patient's admission
    batch = [record(i, ev, key=f"k{i % 2}".encode()) for i, ev in enumerate(events)]
    parking = Parking(engine, GROUP, DEADLETTER, outbox=Outbox.of("enrollment", [DEADLETTER]), retry_delay_s=0)
    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, clock=lambda: NOW, parking=parking)
    before = parked_total(GROUP, "adt.events")
    caplog.set_level(logging.INFO)

    await handler(batch)  # one lane, one group: it fails, is redone one by one, the poison parked

    assert (await counts(engine))["processed"] == 3
    (kept,) = await rows(engine, 'SELECT consumer_group, topic, partition, "offset", key, value, event_id, '
                                 "error_class, traceback, attempts, status FROM parked_event")
    assert (kept.consumer_group, kept.topic, kept.partition, kept.offset, bytes(kept.key)) == (
        GROUP, "adt.events", 0, 2, b"k0")
    assert bytes(kept.value) == batch[2].value and kept.event_id == events[2].event_id
    assert kept.error_class == "CharacterNotInRepertoireError" and kept.attempts == 3 and kept.status == "parked"
    assert "enrollment_svc/store.py" in kept.traceback and "SECRET-VISIT" not in kept.traceback
    (letter,) = await rows(engine, "SELECT topic, key, payload, event_id FROM outbox WHERE topic = :t", t=DEADLETTER)
    dead = ParkedEventV1.model_validate_json(bytes(letter.payload))
    assert (dead.consumer_group, dead.topic, dead.offset, dead.source_event_id) == (GROUP, "adt.events", 2,
                                                                                    events[2].event_id)
    assert base64.b64decode(dead.value_base64) == batch[2].value and dead.event_id == letter.event_id
    assert parked_total(GROUP, "adt.events") == before + 1
    assert waiting(GROUP, "adt.events") == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "parked adt.events/0 offset 2" in logged and "CharacterNotInRepertoireError" in logged
    assert "SECRET-VISIT" not in logged and "DOE" not in logged

    # The consumer reads the batch again (say its offset commit was lost): nothing twice.
    await handler(batch)
    assert (await counts(engine))["processed"] == 3
    assert [r.attempts for r in await rows(engine, "SELECT attempts FROM parked_event")] == [6]
    assert len(await rows(engine, "SELECT 1 FROM outbox WHERE topic = :t", t=DEADLETTER)) == 1
    assert parked_total(GROUP, "adt.events") == before + 1


async def test_redrive_through_the_api_applies_the_parked_event_once_fixed(engine: AsyncEngine) -> None:
    events = stay(1, days_ago=10) + stay(2, days_ago=5, mrn="MRN0002")
    store = BrokenStore(events[1].control_id)
    parking = Parking(engine, GROUP, DEADLETTER, outbox=Outbox.of("enrollment", [DEADLETTER]), retry_delay_s=0)
    handler = AdtEventHandler(engine, store, lanes=1, clock=lambda: NOW, parking=parking)
    await handler([record(i, ev) for i, ev in enumerate(events)])
    assert (await counts(engine))["processed"] == 3

    app = FastAPI()
    app.state.users = Users({**Users.single("ops-token", "olga", frozenset({"ops"}))._by_digest,
                             **Users.single("team-token", "tom", frozenset({"care_team:TOC"}))._by_digest})
    app.include_router(parking_router(parking, handler.reapply))
    ops = {"authorization": "Bearer ops-token"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://enrollment") as client:
        assert (await client.get("/v1/parked")).status_code == 401
        assert (await client.get("/v1/parked", headers={"authorization": "Bearer team-token"})).status_code == 403
        (listed,) = (await client.get("/v1/parked", headers=ops)).json()
        assert (listed["offset"], listed["error_class"], listed["status"]) == (1, "KeyError", "parked")
        assert "value" not in listed and listed["event_id"] == str(events[1].event_id)
        pid = listed["id"]

        still = await client.post(f"/v1/parked/{pid}/redrive", headers=ops)  # not fixed yet
        assert still.status_code == 200 and still.json() == {"id": pid, "outcome": "parked", "error_class": "KeyError"}
        assert (await client.get(f"/v1/parked/{pid}", headers=ops)).json()["attempts"] == 4
        assert (await counts(engine))["processed"] == 3

        store.broken = False  # the fix is deployed
        done = await client.post(f"/v1/parked/{pid}/redrive", headers=ops)
        assert done.json() == {"id": pid, "outcome": "redriven", "error_class": None}
        assert (await counts(engine))["processed"] == 4
        assert (await client.get("/v1/parked", headers=ops)).json() == []
        (again,) = (await client.get("/v1/parked?status=redriven", headers=ops)).json()
        assert (again["redriven_by"], again["status"]) == ("olga", "redriven")
        assert (await client.post(f"/v1/parked/{pid}/redrive", headers=ops)).status_code == 409
        assert (await client.post("/v1/parked/999999/redrive", headers=ops)).status_code == 404
    encounters = await rows(engine, "SELECT visit_number, status FROM encounter ORDER BY visit_number")
    assert [(e.visit_number, e.status) for e in encounters] == [("MRN0001-V1", "discharged"),
                                                                 ("MRN0002-V2", "discharged")]
    audit = await rows(engine, "SELECT actor, detail FROM audit WHERE action = 'redrive' ORDER BY id")
    assert [(a.actor, a.detail.rsplit("outcome=", 1)[1]) for a in audit] == [("olga", "still failing"),
                                                                           ("olga", "redriven")]
    assert waiting(GROUP, "adt.events") == 0


class DisconnectingStore(EnrollmentStore):
    """Loses its database connection while applying one event: the server ends the session."""

    def __init__(self, control_id: str) -> None:
        super().__init__(rules())
        self.control_id = control_id
        self.outage = True

    async def apply_adt_event(self, conn: Any, event: AdtEventV1, now: dt.datetime) -> Applied:
        applied = await super().apply_adt_event(conn, event, now)
        if self.outage and event.control_id == self.control_id:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return applied


async def test_a_lost_database_connection_is_not_parked_and_the_batch_applies_later(engine: AsyncEngine) -> None:
    events = stay(1, days_ago=10) + stay(2, days_ago=5, mrn="MRN0002")
    store = DisconnectingStore(events[2].control_id)
    parking = Parking(engine, GROUP, DEADLETTER, outbox=Outbox.of("enrollment", [DEADLETTER]), retry_delay_s=0)
    handler = AdtEventHandler(engine, store, lanes=1, clock=lambda: NOW, parking=parking)
    batch = [record(i, ev) for i, ev in enumerate(events)]
    with pytest.raises(Exception) as failed:
        await handler(batch)
    assert is_transient(failed.value), type(failed.value)
    assert await rows(engine, "SELECT id FROM parked_event") == []
    assert (await counts(engine))["processed"] < 4
    store.outage = False  # the database is back: the consumer reads the batch again
    await handler(batch)
    assert (await counts(engine))["processed"] == 4
    assert await rows(engine, "SELECT id FROM parked_event") == []


async def test_the_notifier_parks_a_record_it_cannot_apply_and_applies_the_others(engine: AsyncEngine) -> None:
    cfg = config_from_text(config_text("http://127.0.0.1:9", 25))
    parking = Parking(engine, "wpc-notifier-test", "notifier.deadletter",
                      outbox=Outbox.of("notifier", ["notifier.deadletter"]), retry_delay_s=0)
    handler = NotifierHandler(engine, cfg, TOPICS, clock=lambda: NOW, parking=parking)
    good = [candidate("TOC"), candidate("ISR")]
    bad = candidate("TOC").model_copy(update={"reason": "TOC: \x00 every criterion met"})
    values = [good[0].model_dump_json(), bad.model_dump_json(), good[1].model_dump_json()]
    batch = [dataclasses.replace(record(i, stay(1, days_ago=1)[0]), topic=TOPICS.candidates, value=v.encode())
             for i, v in enumerate(values)]

    await handler(batch)

    known = await rows(engine, "SELECT candidate_id FROM notifier_candidate")
    assert {r.candidate_id for r in known} == {good[0].candidate_id, good[1].candidate_id}
    (kept,) = await rows(engine, "SELECT consumer_group, topic, \"offset\", event_id, error_class FROM parked_event")
    assert (kept.consumer_group, kept.topic, kept.offset, kept.event_id) == (
        "wpc-notifier-test", TOPICS.candidates, 1, bad.event_id)
    (letter,) = await rows(engine, "SELECT payload FROM outbox WHERE topic = 'notifier.deadletter'")
    assert json.loads(bytes(letter.payload))["source_event_id"] == str(bad.event_id)
    assert parked_total("wpc-notifier-test", TOPICS.candidates) >= 1
    await handler(batch)  # redelivered: the good ones are duplicates, the bad one is parked still
    assert len(await rows(engine, "SELECT 1 FROM notifier_processed")) == 2
    assert len(await rows(engine, "SELECT 1 FROM parked_event")) == 1
    assert uuid.UUID(str(kept.event_id)) == bad.event_id
