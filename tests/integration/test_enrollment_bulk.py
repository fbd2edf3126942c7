"""The set path (enrollment_svc.bulk): a consumer batch applied as sets, history and live traffic.

What must hold, as one event at a time: the same persons (identities, facts, card), the same
encounters and their events, the same feed findings, the same candidates and the same
outbox records, whether history comes before or after a person's current admission, for a
live county's traffic whose admissions propose people, with every batch delivered twice;
and a poison record in a set batch is parked alone, the others applied once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.synthetic import epoch_ending, synthetic_feed
from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.store import EnrollmentStore
from schemas.adt_event import AdtEventV1
from services.db import create_engine
from services.outbox import Outbox
from services.parking import Parking
from tests.adt_builder import adt, event
from tests.integration.test_arrival_order import candidates
from tests.integration.test_enrollment_batch import record
from tests.integration.test_enrollment_store import NOW, rules, stay
from tests.integration.test_parking import DEADLETTER, GROUP, poisoned

_TABLES = ("outbox, candidate_transition, candidate, encounter_event, encounter, patient_flag, identity_link, "
           "identity, person, processed_event, feed_finding, parked_event")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=6)
    yield eng
    await eng.dispose()


async def empty(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} CASCADE"))
        await EnrollmentStore(rules()).sync_capacity(conn)


def backlog() -> list[AdtEventV1]:
    """A hospital archive (synthetic, March 2025: history) around three hand-made patients:
    history then a current admission with SUD (TOC in order), the same with the current
    admission first (the history arrives late), and a patient with history only."""
    received = NOW - dt.timedelta(hours=1)
    archive = [event(raw, received_at=received) for raw in synthetic_feed(700, seed=4242)]
    one, two, three = ({"mrn": f"BULK{n}", "medi_cal_id": f"9500000{n}B"} for n in (1, 2, 3))
    in_order = stay(1, days_ago=150, **one) + stay(2, days_ago=60, **one)
    current = stay(3, days_ago=0, dx=("F10.20",), discharged=False, **one)
    late_history = stay(1, days_ago=140, **two) + stay(2, days_ago=50, **two)
    late_current = stay(3, days_ago=0, dx=("F10.20",), discharged=False, **two)
    history_only = stay(1, days_ago=200, **three) + stay(2, days_ago=100, dx=("F20.9",), **three)
    # Feed findings, in history too: a visit number another patient's already, and an event
    # time a day after its receipt (a sender's clock wrong).
    long_ago = NOW - dt.timedelta(days=300)
    reused = event(adt("A04", mrn="BULK4", medi_cal_id=None, visit="BULK3-V1", patient_class="E", at=long_ago,
                       admit=long_ago))
    ahead = NOW - dt.timedelta(days=99)
    clock = [event(adt("A08", visit="BULK3-V2", at=ahead + dt.timedelta(hours=h), admit=ahead - dt.timedelta(days=1),
                       **three), received_at=ahead - dt.timedelta(days=1, hours=h)) for h in (0, 5)]
    return [*late_current, *archive[:350], *in_order, *late_history, *history_only, reused, *clock,
            *archive[350:], *current]


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Everything the enrollment tables say, without generated ids and row times."""
    async with engine.connect() as conn:
        keys = {str(r.person_id): tuple(sorted(r.keys)) for r in (await conn.execute(text(
            "SELECT person_id, array_agg(key) AS keys FROM identity GROUP BY person_id"))).all()}

        async def rows(sql: str) -> list[str]:
            found = []
            for r in (await conn.execute(text(sql))).all():
                row = dict(r._mapping)
                if "person_id" in row:
                    row["person_id"] = keys.get(str(row["person_id"]))
                found.append(json.dumps(row, default=str, sort_keys=True))
            return sorted(found)

        return {
            "persons": await rows("SELECT p.id AS person_id, to_jsonb(p) - 'id' - 'created_at' - 'updated_at' AS row "
                                  "FROM person p"),
            "identities": await rows("SELECT key, person_id, authority, value, type_code, merged_into FROM identity"),
            "encounters": await rows(
                "SELECT e.person_id, to_jsonb(e) - 'id' - 'person_id' - 'created_at' - 'updated_at' AS row "
                "FROM encounter e"),
            "events": await rows(
                "SELECT v.event_id, e.facility, e.visit_number, v.trigger_event, v.event_time, v.body "
                "FROM encounter_event v JOIN encounter e ON e.id = v.encounter_id"),
            "processed": await rows("SELECT event_id FROM processed_event"),
            "findings": await rows("SELECT facility, kind, shard, count, first_seen, last_seen FROM feed_finding"),
            "candidates": sorted(json.dumps(c, default=str, sort_keys=True) for c in await candidates(engine)),
            "outbox": await rows("SELECT topic, count(*) AS n FROM outbox GROUP BY topic"),
        }


def records(events: Sequence[AdtEventV1]) -> list[ConsumerRecord[bytes, bytes]]:
    return [record(i, ev, key=ev.patient.patient_key.encode()) for i, ev in enumerate(events)]


async def test_a_backlog_in_bulk_batches_ends_as_one_event_at_a_time(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    events = backlog()
    await empty(engine)
    one_by_one = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, group_max=1, clock=lambda: NOW,
                                 bulk_min=0)
    for rec in records(events):
        await one_by_one([rec])
    expected = await snapshot(engine)
    assert len(expected["candidates"]) == 2  # BULK1 and BULK2's TOC, however their history came
    assert len(expected["encounters"]) > 200 and len(expected["findings"]) == 2
    assert any('"count": 2' in f for f in expected["findings"])  # the clock findings, on one counter

    await empty(engine)
    caplog.set_level(logging.DEBUG, logger="enrollment_svc.handler")
    in_bulk = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=2, clock=lambda: NOW, bulk_min=8)
    batch = records(events)
    for i in range(0, len(batch), 100):
        await in_bulk(batch[i : i + 100])
        await in_bulk(batch[i : i + 100])  # redelivered: nothing twice
    # "bulk: <handled> of <batch> events ...": history went in bulk, first deliveries and copies alike.
    bulked = [int(r.getMessage().split()[1]) for r in caplog.records if r.getMessage().startswith("bulk: ")]
    assert sum(bulked) > 2 * (len(events) - 40) and not any("not applied" in r.getMessage() for r in caplog.records)
    assert await snapshot(engine) == expected


def _handled_counts() -> tuple[float, float, float]:
    """The service's counters of records applied and found duplicate, and of apply times."""
    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    return (value("wpc_enrollment_events_total", {"outcome": "applied"}),
            value("wpc_enrollment_events_total", {"outcome": "duplicate"}),
            value("wpc_enrollment_apply_seconds_count"))


def live_traffic() -> tuple[list[AdtEventV1], list[AdtEventV1]]:
    """A county's traffic of the last hours (synthetic, dated up to NOW) around four patients
    who qualify for TOC at their third admission (their earlier stays: the first list), one
    of them with a discharge that arrives before its admission (late: decided again), and
    one whose admission and discharge come in one batch (two events: one at a time)."""
    received = NOW - dt.timedelta(minutes=1)
    n = 800
    feed = [event(raw, received_at=received) for raw in synthetic_feed(n, seed=99, epoch=epoch_ending(NOW, n))]
    qualifying = [{"mrn": f"LIVE{k}", "medi_cal_id": f"9600000{k}L"} for k in range(4)]
    before = [ev for who in qualifying for ev in stay(1, days_ago=150, **who) + stay(2, days_ago=60, **who)]
    admissions = [stay(3, days_ago=0, dx=("F10.20",), discharged=False, **who)[0] for who in qualifying[:2]]
    late_discharge = stay(4, days_ago=1, dx=("F10.20",), **qualifying[2])  # A01, A03
    both = stay(5, days_ago=0, dx=("F10.20",), **qualifying[3])
    live = [*feed[:150], admissions[0], *feed[150:420], late_discharge[1], *feed[420:600], late_discharge[0],
            admissions[1], *feed[600:], *both]
    return before, live


async def test_live_traffic_in_sets_ends_as_one_event_at_a_time(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    before, live = live_traffic()
    await empty(engine)
    one_by_one = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, group_max=1, clock=lambda: NOW,
                                 bulk_min=0)
    for rec in records([*before, *live]):
        await one_by_one([rec])
    expected = await snapshot(engine)
    assert sum('"status": "pending"' in c for c in expected["candidates"]) >= 4  # LIVE0-3, and the feed's own

    await empty(engine)
    caplog.set_level(logging.DEBUG, logger="enrollment_svc.handler")
    in_sets = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=2, clock=lambda: NOW, bulk_min=8)
    for rec in records(before):
        await one_by_one([rec])
    batch = records(live)
    counted = _handled_counts()
    for i in range(0, len(batch), 100):
        await in_sets(batch[i : i + 100])
        await in_sets(batch[i : i + 100])  # redelivered: nothing twice
    # Every record handled counts once as applied or duplicate, and once in the apply-time
    # histogram, whichever way it went.
    applied, duplicates, timed = (now - then for now, then in zip(_handled_counts(), counted, strict=True))
    assert applied == len(live) and duplicates == len(live) and timed == 2 * len(live)
    # "bulk: <handled> of <batch> events (..., <decided> decided) ...": most of the live traffic
    # went as sets, its triggers decided there, candidates among them.
    # A patient's several events in one batch go in rounds, so nearly all of it: not only those
    # with one event.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bulk: ")]
    assert len(lines) == 2 * (len(batch) // 100)  # the last batch, under bulk_min, goes one by one
    assert sum(int(line.split()[1]) for line in lines[::2]) > 0.9 * len(live)
    assert sum(int(line.split(", ")[2].split()[0]) for line in lines) > 100
    assert not any("not applied" in r.getMessage() for r in caplog.records)
    assert await snapshot(engine) == expected


async def test_a_poison_record_in_a_bulk_batch_is_parked_alone_and_the_rest_applied_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    events = [event(raw, received_at=NOW) for raw in synthetic_feed(60, seed=77)]
    at = next(i for i, ev in enumerate(events) if ev.visit is not None and ev.visit.visit_number)
    events[at] = poisoned(events[at])
    await empty(engine)
    parking = Parking(engine, GROUP, DEADLETTER, outbox=Outbox.of("enrollment", [DEADLETTER]), retry_delay_s=0)
    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=2, clock=lambda: NOW, parking=parking,
                              bulk_min=8)
    batch = records(events)
    caplog.set_level(logging.INFO, logger="enrollment_svc.handler")

    await handler(batch)
    await handler(batch)  # redelivered

    assert any(r.getMessage().startswith("bulk of 60 events not applied") for r in caplog.records)
    async with engine.connect() as conn:
        processed = set((await conn.execute(text("SELECT event_id FROM processed_event"))).scalars().all())
        parked = (await conn.execute(text('SELECT "offset", attempts FROM parked_event'))).all()
        letters = (await conn.execute(text("SELECT count(*) FROM outbox WHERE topic = :t"), {"t": DEADLETTER})).scalar()
    assert processed == {ev.event_id for i, ev in enumerate(events) if i != at}
    assert [(p.offset, p.attempts) for p in parked] == [(at, 6)] and letters == 1


async def test_the_rounds_commit_apart_from_the_first_set_and_fail_alone(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The first set commits before the rounds (its candidates are published without waiting
    for them); when a round fails, the first set stays applied, once, and only the rounds'
    events go one at a time, the poison one parked."""
    await empty(engine)
    store = EnrollmentStore(rules())
    qualifying = {"mrn": "FIRST1", "medi_cal_id": "97000001F"}
    one_by_one = AdtEventHandler(engine, store, lanes=1, group_max=1, clock=lambda: NOW, bulk_min=0)
    for rec in records(stay(1, days_ago=150, **qualifying) + stay(2, days_ago=60, **qualifying)):
        await one_by_one([rec])
    admission = stay(3, days_ago=0, dx=("F10.20",), discharged=False, **qualifying)[0]
    # Nine patients with an admission and a discharge each in the batch: two events, so rounds.
    pairs = [stay(1, days_ago=1, mrn=f"ROUND{k}", medi_cal_id=None) for k in range(9)]
    pairs[4][1] = poisoned(pairs[4][1])
    events = [admission, *(ev for pair in pairs for ev in pair)]
    poison_at = events.index(pairs[4][1])
    parking = Parking(engine, GROUP, DEADLETTER, outbox=Outbox.of("enrollment", [DEADLETTER]), retry_delay_s=0)
    handler = AdtEventHandler(engine, store, lanes=2, clock=lambda: NOW, parking=parking, bulk_min=8)
    caplog.set_level(logging.INFO, logger="enrollment_svc.handler")
    counted = _handled_counts()

    await handler(records(events))

    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("bulk rounds of 18 events not applied") for m in messages)
    assert not any(m.startswith("bulk of ") for m in messages)
    applied, duplicates, _ = (now - then for now, then in zip(_handled_counts(), counted, strict=True))
    assert (applied, duplicates) == (len(events) - 1, 0)  # each once; the poison one parked
    async with engine.connect() as conn:
        processed = set((await conn.execute(text("SELECT event_id FROM processed_event"))).scalars().all())
        parked = (await conn.execute(text('SELECT "offset" FROM parked_event'))).scalars().all()
        encounters = (await conn.execute(text(
            "SELECT count(*) FROM encounter WHERE visit_number LIKE 'ROUND%'"))).scalar()
    assert processed >= {ev.event_id for i, ev in enumerate(events) if i != poison_at}
    assert pairs[4][1].event_id not in processed and parked == [poison_at]
    assert encounters == 9
    toc = [c for c in await candidates(engine) if c["program"] == "TOC"]
    assert len(toc) == 1
