"""Group commit in the handler (enrollment_svc.handler): a lane's events in one transaction.

What must hold, as it does one event per transaction: every event's effects are kept
exactly once when another event of its group fails (the group is rolled back and
redone one by one), duplicates in one group are applied once, later events of a group
see the earlier ones, and two instances deciding on one person at once still make one
candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.store import Applied, EnrollmentStore
from schemas.adt_event import AdtEventV1
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.integration.test_enrollment_store import NOW, rules, stay


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    async with eng.begin() as conn:
        await EnrollmentStore(rules()).sync_capacity(conn)
    yield eng
    await eng.dispose()


class FailingStore(EnrollmentStore):
    """Fails applying chosen events: ``times`` times each (then applies them), or for ever."""

    def __init__(self, fail: dict[str, int], error: type[Exception]) -> None:
        super().__init__(rules())
        self.fail = fail
        self.error = error
        self.attempts: list[str] = []

    async def apply_adt_event(self, conn: Any, event: AdtEventV1, now: dt.datetime) -> Applied:
        control = event.control_id
        self.attempts.append(control)
        applied = await super().apply_adt_event(conn, event, now)  # written, then lost with the rollback
        if self.fail.get(control, 0) > 0:
            self.fail[control] -= 1
            raise self.error("injected")
        return applied


def record(offset: int, ev: AdtEventV1, key: bytes = b"k") -> ConsumerRecord[bytes, bytes]:
    value = ev.model_dump_json().encode()
    return ConsumerRecord(
        topic="adt.events",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM processed_event) AS processed, "
                    "(SELECT count(*) FROM encounter_event) AS encounter_events, "
                    "(SELECT count(*) FROM encounter) AS encounters, "
                    "(SELECT count(*) FROM candidate) AS candidates, "
                    "(SELECT count(*) FROM candidate_transition) AS transitions, "
                    "(SELECT count(*) FROM outbox WHERE topic = 'enrollment.candidates') AS published"
                )
            )
        ).one()
    return dict(row._mapping)


def three_stays(mrn: str = "MRN0001") -> list[AdtEventV1]:
    """Two past stays and a current admission with SUD: the last event makes a TOC candidate."""
    return (
        stay(1, days_ago=100, mrn=mrn)
        + stay(2, days_ago=50, mrn=mrn)
        + stay(3, days_ago=0, mrn=mrn, dx=("F10.20",), discharged=False)
    )


async def test_a_group_sees_its_own_earlier_events_and_makes_the_candidate_once(engine: AsyncEngine) -> None:
    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, clock=lambda: NOW)
    events = three_stays()
    async with handler.lane() as lane:
        applied = await lane.apply(events)
    assert [a.candidate_status for a in applied] == [None] * 4 + ["pending"]
    assert await counts(engine) == {
        "processed": 5,
        "encounter_events": 5,
        "encounters": 3,
        "candidates": 1,
        "transitions": 2,
        "published": 1,
    }


async def test_duplicates_in_one_group_are_applied_once(engine: AsyncEngine) -> None:
    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, clock=lambda: NOW)
    admit = NOW - dt.timedelta(hours=5)
    a01 = event(adt("A01", visit="V7", at=admit, admit=admit))
    a03 = event(
        adt("A03", visit="V7", at=admit + dt.timedelta(hours=2), admit=admit, discharge=admit + dt.timedelta(hours=2))
    )
    async with handler.lane() as lane:
        applied = await lane.apply([a01, a01, a03, a01, a03])
    assert [a.duplicate for a in applied] == [False, True, False, True, True]
    assert applied[0].encounter_id == applied[2].encounter_id
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM encounter"))
    assert status == "discharged"
    assert (await counts(engine))["encounter_events"] == 2


async def test_a_conflict_in_a_group_redoes_the_group_one_by_one_keeping_every_effect_once(
    engine: AsyncEngine,
) -> None:
    events = three_stays()
    # The second stay's admission meets a deadlock the first time: after the events before it
    # in the group were written, and before the candidate the last one makes.
    store = FailingStore({events[2].control_id: 1}, asyncpg.exceptions.DeadlockDetectedError)
    handler = AdtEventHandler(engine, store, lanes=1, clock=lambda: NOW)
    await handler([record(i, ev) for i, ev in enumerate(events)])
    controls = [ev.control_id for ev in events]
    # The group up to the failure, then every event alone (the failed one succeeds on its own).
    assert store.attempts == controls[:3] + controls
    assert await counts(engine) == {
        "processed": 5,
        "encounter_events": 5,
        "encounters": 3,
        "candidates": 1,
        "transitions": 2,
        "published": 1,
    }


async def test_an_event_that_keeps_failing_stops_its_lane_after_committing_the_ones_before_it(
    engine: AsyncEngine,
) -> None:
    events = three_stays()
    broken = events[3].control_id
    store = FailingStore({broken: 10**6}, RuntimeError)
    handler = AdtEventHandler(engine, store, lanes=1, clock=lambda: NOW)
    batch = [record(i, ev) for i, ev in enumerate(events)]
    with pytest.raises(RuntimeError):
        await handler(batch)
    # Nothing of the failed group is half kept: the three events before the broken one, alone.
    assert await counts(engine) == {
        "processed": 3,
        "encounter_events": 3,
        "encounters": 2,
        "candidates": 0,
        "transitions": 0,
        "published": 0,
    }
    # The consumer reads the batch again once the cause is gone: the rest is applied, nothing twice.
    store.fail.clear()
    await handler(batch)
    assert await counts(engine) == {
        "processed": 5,
        "encounter_events": 5,
        "encounters": 3,
        "candidates": 1,
        "transitions": 2,
        "published": 1,
    }


async def test_two_instances_grouping_events_of_one_person_make_one_candidate(engine: AsyncEngine) -> None:
    # One person (one Medi-Cal id) at two hospitals, two stays each in the last six months;
    # each hospital's next admission reaches a different instance at the same moment.
    for mrn, facility in (("C-1", "COUNTYGEN"), ("S-1", "STMARY")):
        past = stay(1, days_ago=100, mrn=mrn, facility=facility) + stay(2, days_ago=50, mrn=mrn, facility=facility)
        async with AdtEventHandler(engine, EnrollmentStore(rules()), clock=lambda: NOW).lane() as lane:
            await lane.apply(past)

    def current(mrn: str, facility: str) -> Sequence[AdtEventV1]:
        # The admission and an update of the same stay: a group of two in each instance.
        admit = NOW
        return [
            event(adt("A01", facility=facility, mrn=mrn, visit=f"{mrn}-NOW", at=admit, admit=admit, dx=("F10.20",))),
            event(
                adt(
                    "A08",
                    facility=facility,
                    mrn=mrn,
                    visit=f"{mrn}-NOW",
                    at=admit + dt.timedelta(minutes=5),
                    admit=admit,
                    dx=("F10.20",),
                )
            ),
        ]

    one = AdtEventHandler(engine, EnrollmentStore(rules()), clock=lambda: NOW)
    two = AdtEventHandler(engine, EnrollmentStore(rules()), clock=lambda: NOW)

    async def run(handler: AdtEventHandler, events: Sequence[AdtEventV1]) -> list[Applied]:
        async with handler.lane() as lane:
            return await lane.apply(events)

    results = await asyncio.gather(run(one, current("C-1", "COUNTYGEN")), run(two, current("S-1", "STMARY")))
    made = [a for group in results for a in group if a.candidate_id is not None]
    assert len(made) == 1
    async with engine.connect() as conn:
        active = await conn.scalar(
            text("SELECT count(*) FROM candidate WHERE status IN ('queued', 'pending', 'accepted', 'enrolled')")
        )
        persons = await conn.scalar(text("SELECT count(DISTINCT person_id) FROM encounter"))
    assert active == 1 and persons == 1


async def test_a_lane_cancelled_mid_group_keeps_nothing_of_it_and_leaves_a_clean_pool(engine: AsyncEngine) -> None:
    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, clock=lambda: NOW)
    events = [ev for n in range(1, 31) for ev in stay(n, days_ago=n, mrn=f"CX-{n}")]

    async def run() -> None:
        async with handler.lane() as lane:
            await lane.apply(events)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)  # somewhere inside the group (or, on a very fast machine, done)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # All of the group or none of it: one transaction.
    assert (await counts(engine))["processed"] in (0, len(events))
    async with engine.connect() as conn:
        stuck = await conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        ))
    assert stuck == 0
    # The pool's connections work; the events apply when they come again.
    applied = [await handler.apply(ev) for ev in events]
    assert (await counts(engine))["processed"] == len(events)
    assert all(a.duplicate for a in applied) or not any(a.duplicate for a in applied)
