"""Every ADT trigger A01–A62 through the enrollment store on the real PostgreSQL: none fails
(the stall of issue 10 was a lone A14 and an A18), each does what `history.TRIGGERS` says,
and an A18 carrying MRG merges like an A40."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.history import TRIGGERS
from enrollment_svc.store import EnrollmentStore, identity_key
from tests.adt_builder import adt, event
from tests.integration.test_enrollment_store import NOW, apply, engine, rules, stay

__all__ = ["engine"]  # the fixture

ALL = [f"A{n:02d}" for n in range(1, 63)]
VISIT_EFFECTS = ("transition", "update")


async def test_a_lone_event_of_every_trigger_applies_as_the_table_says(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for n, trigger in enumerate(ALL):
        at = NOW - dt.timedelta(hours=70 - n)
        ev = event(adt(trigger, visit=f"V-{trigger}", at=at, admit=at))
        applied = await apply(engine, store, ev)
        assert applied.person_id is not None, trigger
        assert (applied.encounter_id is not None) == (TRIGGERS[trigger].effect in VISIT_EFFECTS), trigger
    async with engine.connect() as conn:
        processed = await conn.scalar(text("SELECT count(*) FROM processed_event"))
        result = await conn.execute(text("SELECT trigger_event FROM encounter_event"))
        stored = {r.trigger_event for r in result.all()}
        statuses = dict((await conn.execute(text("SELECT visit_number, status FROM encounter"))).all())
    assert processed == len(ALL)
    assert stored == {t for t in ALL if TRIGGERS[t].effect in VISIT_EFFECTS}
    assert statuses == {"V-A01": "active", "V-A02": "active", "V-A03": "discharged", "V-A04": "active",
                        "V-A05": "preadmit", "V-A06": "active", "V-A07": "active", "V-A08": "active",
                        "V-A11": "cancelled", "V-A12": "active", "V-A13": "active", "V-A38": "cancelled"}


async def test_every_trigger_after_an_admission_leaves_the_visit_consistent(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for n, trigger in enumerate(ALL):
        admit = NOW - dt.timedelta(days=3)
        await apply(engine, store, event(adt("A01", visit=f"W-{trigger}", at=admit, admit=admit)))
        later = admit + dt.timedelta(hours=1, minutes=n)
        await apply(engine, store, event(adt(trigger, visit=f"W-{trigger}", at=later, admit=admit)))
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(text("SELECT visit_number, status FROM encounter"))).all())
    expected = {f"W-{t}": "active" for t in ALL} | {"W-A03": "discharged", "W-A11": "cancelled"}
    assert statuses == expected


async def test_an_a18_with_mrg_merges_like_an_a40_and_one_without_changes_nothing(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=90, mrn="OLD-1", medi_cal_id=None) + stay(2, days_ago=40, mrn="NEW-1", medi_cal_id=None):
        await apply(engine, store, ev)
    bare = event(adt("A18", mrn="NEW-1", visit="X1", at=NOW - dt.timedelta(days=2), medi_cal_id=None))
    applied = await apply(engine, store, bare)
    assert applied.encounter_id is None
    async with engine.connect() as conn:
        persons = await conn.scalar(text("SELECT count(DISTINCT person_id) FROM encounter"))
    assert persons == 2  # no MRG: nothing to merge

    merge = event(adt("A18", mrn="NEW-1", prior_mrn="OLD-1", visit="X1", at=NOW - dt.timedelta(days=1),
                      medi_cal_id=None))
    await apply(engine, store, merge)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT identity_key, person_id FROM encounter"))).all()
        links = (await conn.execute(text("SELECT action, key_a, key_b, actor FROM identity_link"))).all()
    assert {r.identity_key for r in rows} == {identity_key("COUNTYGEN", "NEW-1")}
    assert len({r.person_id for r in rows}) == 1
    assert [(lk.action, lk.key_a, lk.key_b, lk.actor) for lk in links] == [
        ("merge", identity_key("COUNTYGEN", "OLD-1"), identity_key("COUNTYGEN", "NEW-1"), "adt:A18")]
