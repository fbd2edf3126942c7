"""Property: any arrival order gives the candidates and recorded decisions of the in-order feed.

Hypothesis draws a few multi-hospital patients (one Medi-Cal id, an MRN per hospital,
past and current ED visits and stays with or without diagnoses, updates, discharges),
applies their events once in event-time order, one at a time (the reference), then in
a drawn arrival order with some records delivered twice, spread over Kafka partitions by patient key (each key's records
in arrival order, as Kafka keeps them), the partitions split between two service
instances that apply their batches at the same time, each over several lanes with
group commit. Both runs must end with the same candidates: program, status, triggering
visit, rule version and recorded decision (criteria and evidence, evidence named by
facility and visit). Candidates the system withdrew as superseded on the way are not
candidates of the in-order feed and are left out; that such withdrawals happen only
when a candidate was made on part of the facts is `test_arrival_order`'s business.

Real PostgreSQL: one database for the test, emptied between runs. Few examples, so the
test stays well under a minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.store import EnrollmentStore
from schemas.adt_event import AdtEventV1
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.integration.test_arrival_order import candidates
from tests.integration.test_enrollment_store import NOW, rules

FACILITIES = ("COUNTYGEN", "STMARY", "PSYCHHOSP", "SOBER1")
DIAGNOSES = ("F10.20", "F20.9", "I10", "Z59.00")  # SUD, SMI, hypertension (ACSC), homelessness
PARTITIONS = 4
_TABLES = ("outbox, candidate_transition, candidate, encounter_event, encounter, patient_flag, identity_link, "
           "identity, person, processed_event, feed_finding")


@dataclass(frozen=True)
class Visit:
    facility: str
    ed: bool  # an ED visit (A04, class E), else an inpatient stay (A01)
    hours_ago: int
    dx: tuple[str, ...]
    update_dx: tuple[str, ...]  # an A08 two hours in that adds these (none: no A08)
    discharged: bool


visits = st.builds(
    Visit,
    facility=st.sampled_from(FACILITIES),
    ed=st.booleans(),
    # Today (current: within the rules' 72 h) or months back, inside and outside the windows.
    hours_ago=st.sampled_from((3, 10, 30, 24 * 20, 24 * 60, 24 * 100, 24 * 150, 24 * 250, 24 * 400)),
    dx=st.lists(st.sampled_from(DIAGNOSES), max_size=2, unique=True).map(tuple),
    update_dx=st.lists(st.sampled_from(DIAGNOSES), max_size=1).map(tuple),
    discharged=st.booleans(),
)
patients = st.lists(st.lists(visits, min_size=1, max_size=5), min_size=1, max_size=3)


def feed(drawn: Sequence[Sequence[Visit]]) -> list[AdtEventV1]:
    """The patients' events, in event-time order (every time distinct: the order is total)."""
    messages: list[tuple[dt.datetime, bytes]] = []
    for p, stays in enumerate(drawn):
        medi_cal = f"9{p:07d}P"
        for n, v in enumerate(stays):
            # Minutes apart per patient and visit, so no two events share a time.
            admit = NOW - dt.timedelta(hours=v.hours_ago, minutes=7 * (p * 10 + n))
            common: dict[str, Any] = {
                "facility": v.facility, "mrn": f"{v.facility[:2]}{p}", "visit": f"P{p}V{n}",
                "patient_class": "E" if v.ed else "I", "medi_cal_id": medi_cal, "admit": admit,
            }
            messages.append((admit, adt("A04" if v.ed else "A01", at=admit, dx=v.dx, **common)))
            if v.update_dx:
                at = admit + dt.timedelta(hours=2)
                messages.append((at, adt("A08", at=at, dx=v.dx + v.update_dx, **common)))
            if v.discharged or v.hours_ago > 72:
                out = admit + dt.timedelta(hours=5 if v.ed else 50)
                messages.append((out, adt("A03", at=out, discharge=out, dx=v.dx + v.update_dx, **common)))
    return [event(raw) for _, raw in sorted(messages)]


def record(offset: int, ev: AdtEventV1) -> ConsumerRecord[bytes, bytes]:
    key = ev.patient.patient_key.encode()
    value = ev.model_dump_json().encode()
    return ConsumerRecord(topic="adt.events", partition=zlib.crc32(key) % PARTITIONS, offset=offset, timestamp=0,
                          timestamp_type=0, key=key, value=value, checksum=None, serialized_key_size=len(key),
                          serialized_value_size=len(value), headers=())


async def outcome(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """The candidates a run ends with (superseded ones aside), comparable across runs."""
    async with engine.connect() as conn:
        persons = {
            str(r.person_id): tuple(sorted(r.keys))
            for r in (await conn.execute(text(
                "SELECT person_id, array_agg(key) AS keys FROM identity GROUP BY person_id"))).all()
        }
        ids = (await conn.execute(text("SELECT person_id FROM candidate ORDER BY seq"))).scalars().all()
    found = []
    for person_id, c in zip(ids, await candidates(engine), strict=True):
        if c["status"] == "withdrawn" and c["status_reason"] == "superseded: facts arrived late":
            continue
        found.append((persons[str(person_id)], c["program"], c["status"], c["facility"], c["visit_number"],
                      c["decision"]))
    return sorted(found, key=repr)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=12)
    yield eng
    await eng.dispose()


async def empty(engine: AsyncEngine, store: EnrollmentStore) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} CASCADE"))
        await store.sync_capacity(conn)


@pytest.mark.slow  # 10-30 s on a shared 2-core machine
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=patients, data=st.data())
async def test_any_arrival_order_over_lanes_and_two_instances_decides_as_the_in_order_feed(
    engine: AsyncEngine, drawn: list[list[Visit]], data: st.DataObject
) -> None:
    events = feed(drawn)
    store = EnrollmentStore(rules())
    await empty(engine, store)
    for ev in events:  # the reference: in event order, one transaction each
        async with engine.begin() as conn:
            await store.apply_adt_event(conn, ev, NOW)
    expected = await outcome(engine)

    await empty(engine, store)
    arrival = data.draw(st.permutations(events), label="arrival order")
    # Kafka redelivers: some records come twice (a retried batch, a rebalance), anywhere later.
    for again in data.draw(st.lists(st.integers(0, len(events) - 1), max_size=4), label="redelivered"):
        arrival.insert(data.draw(st.integers(again + 1, len(arrival)), label="at"), arrival[again])
    batch = data.draw(st.integers(1, 6), label="batch size")
    # History in a batch of at least this many events is applied as a set (enrollment_svc.bulk); 0: never.
    bulk_min = data.draw(st.sampled_from((0, 1, 2)), label="bulk from")
    instances = [AdtEventHandler(engine, EnrollmentStore(rules()), lanes=2, clock=lambda: NOW, bulk_min=bulk_min)
                 for _ in range(2)]
    # Each instance owns half the partitions and reads its records in arrival order, in batches.
    mine: list[list[ConsumerRecord[bytes, bytes]]] = [[], []]
    for offset, ev in enumerate(arrival):
        r = record(offset, ev)
        mine[r.partition % 2].append(r)

    async def consume(handler: AdtEventHandler, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for i in range(0, len(records), batch):
            await handler(records[i : i + batch])

    await asyncio.gather(*(consume(h, rs) for h, rs in zip(instances, mine, strict=True)))
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM processed_event")) == len(events)
    assert await outcome(engine) == expected
