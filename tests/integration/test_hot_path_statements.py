"""How many statements the store sends for the ADT path's common cases, on the real PostgreSQL.

The hot path's cost is its round trips (`enrollment_svc.store`: the common event is two
statements). These bounds are today's counts: moving a rule out of SQL into a pure function
(`slots.py`, `merges.py`) must not add a round trip, and a change that cuts one lowers the
bound here. Every statement of the store goes through `Sql._args` (named → positional
parameters), which the test counts on the real connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.synthetic import epoch_ending, synthetic_feed
from enrollment_svc import bulk, sql
from enrollment_svc.sql import Sql
from enrollment_svc.store import Applied, EnrollmentStore
from schemas.adt_event import AdtEventV1
from services.db import create_engine
from tests.adt_builder import event
from tests.integration.test_enrollment_store import NOW, apply, rules, stay


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


class Counter:
    def __init__(self) -> None:
        self.statements: list[str] = []


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    counter = Counter()
    original = Sql._args

    def counted(statement: str, params: Any) -> tuple[str, list[Any]]:
        counter.statements.append(statement)
        return original(statement, params)

    monkeypatch.setattr(Sql, "_args", staticmethod(counted))
    yield counter


async def counted_apply(
    engine: AsyncEngine, store: EnrollmentStore, counter: Counter, ev: AdtEventV1, now: dt.datetime = NOW
) -> tuple[Applied, int]:
    async with engine.begin() as conn:
        await store.sync_capacity(conn)
        before = len(counter.statements)
        applied = await store.apply_adt_event(conn, ev, now)
        return applied, len(counter.statements) - before


async def test_a_known_patient_s_new_visit_is_two_statements(engine: AsyncEngine, counter: Counter) -> None:
    store = EnrollmentStore(rules())
    await apply(engine, store, stay(1, days_ago=200)[0])
    applied, statements = await counted_apply(engine, store, counter, stay(2, days_ago=100, discharged=False)[0])
    assert applied.encounter_id is not None and applied.candidate_id is None
    assert statements == 2, counter.statements[-statements:]


async def test_a_proposal_into_a_free_slot_is_as_few_statements_as_before(
    engine: AsyncEngine, counter: Counter
) -> None:
    """The third admission in six months with SUD: a TOC candidate, proposed at once."""
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=150) + stay(2, days_ago=60):
        await apply(engine, store, ev)
    applied, statements = await counted_apply(
        engine, store, counter, stay(3, days_ago=0, dx=("F10.20",), discharged=False)[0]
    )
    assert applied.candidate_status == "pending"
    # mark + update, store encounter + history, the stay's earlier candidate, the candidate with its
    # transition and outbox row, the proposal's read, the capacity lock, the count, the publish.
    assert statements <= 8, counter.statements[-statements:]


async def test_a_queued_proposal_is_as_few_statements_as_before(engine: AsyncEngine, counter: Counter) -> None:
    store = EnrollmentStore(rules(TOC=0))
    for ev in stay(1, days_ago=150) + stay(2, days_ago=60):
        await apply(engine, store, ev)
    applied, statements = await counted_apply(
        engine, store, counter, stay(3, days_ago=0, dx=("F10.20",), discharged=False)[0]
    )
    assert applied.candidate_status == "queued"
    assert statements <= 7, counter.statements[-statements:]


async def test_a_batch_of_live_traffic_is_a_few_statements_whatever_its_size(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set path (`enrollment_svc.bulk`) for a consumer batch of current events: a few
    statements per set (pipelined ones counted once; the whole batch, then a round per
    patient's next event), plus a few per candidate it makes; far fewer than per event."""
    store = EnrollmentStore(rules())
    n = 300
    events = [event(raw, received_at=NOW) for raw in synthetic_feed(n, seed=5, epoch=epoch_ending(NOW, n))]
    items = [bulk.item_of(ev, store.rules) for ev in events]
    sent: list[str] = []
    original = sql._positional

    def counted(statement: str) -> tuple[str, tuple[str, ...]]:
        sent.append(statement)
        return original(statement)

    monkeypatch.setattr(sql, "_positional", counted)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("TRUNCATE candidate_transition, candidate, encounter_event, encounter, identity, "
                                   "person, processed_event, feed_finding CASCADE")
        await store.sync_capacity(conn)
        before = len(sent)
        result = await bulk.apply_batch(await Sql.of(conn), store, items, NOW)
    statements = len(sent) - before
    sets = sum(1 for statement in sent[before:] if statement == bulk._LOCK)  # the whole batch, then rounds
    made = sum(1 for applied in result.decided.values() if applied.candidate_id is not None)
    assert len(result.handled) > n * 9 // 10 and len(result.decided) > n // 2
    assert statements <= 14 * sets + 8 * made, (statements, sets, made)
    assert statements < n // 2
