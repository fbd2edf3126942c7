"""Decisions follow from the facts, not from the order they arrived in (issue 12).

Each case sends a patient's events in an order a burst, a backfill or a catch-up after
an outage produces (today's admission before the history that makes it count, an A40
before the merged MRN's own events), and expects what the in-order feed proposes.
Real PostgreSQL, one database per test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.store import EnrollmentStore, identity_key
from schemas.adt_event import AdtEventV1
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.integration.test_enrollment_store import NOW, apply, rules, stay


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


async def candidates(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every candidate with its trigger's visit and its status, oldest first; evidence named by
    facility and visit number (encounter ids differ from one run to another)."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.program, c.status, c.status_reason, c.facility, e.visit_number, c.decision "
                    "FROM candidate c LEFT JOIN encounter e ON e.id = c.encounter_id ORDER BY c.seq"
                )
            )
        ).all()
        visits = {str(r.id): f"{r.facility}/{r.visit_number}"
                  for r in (await conn.execute(text("SELECT id, facility, visit_number FROM encounter"))).all()}
    found = []
    for r in rows:
        candidate = dict(r._mapping)
        for criterion in candidate["decision"]["criteria"]:
            criterion["evidence"] = [visits.get(e, e) for e in criterion["evidence"]]
        found.append(candidate)
    return found


def active(found: Sequence[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(c["program"], c["status"], c["visit_number"]) for c in found
            if c["status"] in ("queued", "pending", "accepted", "enrolled")]


async def apply_all(engine: AsyncEngine, store: EnrollmentStore, events: Sequence[AdtEventV1]) -> None:
    for ev in events:
        await apply(engine, store, ev)


def admissions_evidence(decision: dict[str, Any]) -> int:
    counted = next(c for c in decision["criteria"] if c["name"].startswith("inpatient_admissions"))
    return len(counted["evidence"])


async def test_todays_admission_before_its_history_still_makes_the_toc_candidate(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    today = stay(3, days_ago=0, dx=("F10.20",), discharged=False)
    history = stay(1, days_ago=100) + stay(2, days_ago=50)
    await apply_all(engine, store, today + history)
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "MRN0001-V3")]
    assert admissions_evidence(found[0]["decision"]) == 3
    # What the in-order feed records, criterion for criterion.
    in_order = EnrollmentStore(rules())
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox, candidate_transition, candidate, encounter_event, encounter, "
                                "patient_flag, identity_link, identity, person, processed_event CASCADE"))
    await apply_all(engine, in_order, history + today)
    expected = await candidates(engine)
    assert [c["decision"] for c in expected] == [found[0]["decision"]]


async def test_toc_with_earlier_stays_at_two_other_hospitals_linked_by_medi_cal_id(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    today = stay(3, days_ago=0, facility="COUNTYGEN", mrn="C-1", dx=("F10.20",), discharged=False)
    others = stay(1, days_ago=90, facility="STMARY", mrn="S-1") + stay(2, days_ago=30, facility="PSYCHHOSP", mrn="P-1")
    await apply_all(engine, store, today + others)
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "C-1-V3")]
    assert admissions_evidence(found[0]["decision"]) == 3


async def test_an_earlier_stays_discharge_before_its_admit_still_counts(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    first, second = stay(1, days_ago=100), stay(2, days_ago=50)
    today = stay(3, days_ago=0, dx=("F10.20",), discharged=False)
    # The first stay's discharge, today's admission, then the first stay's admit and the second stay.
    await apply_all(engine, store, [first[1], *today, first[0], *second])
    assert active(await candidates(engine)) == [("TOC", "pending", "MRN0001-V3")]


async def test_three_sud_ed_visits_at_three_hospitals_sent_together(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    visits = []
    for n, (facility, mrn, hours) in enumerate(
        (("STMARY", "S-2", 24 * 60), ("PSYCHHOSP", "P-2", 24 * 20), ("COUNTYGEN", "C-2", 3)), start=1
    ):
        at = NOW - dt.timedelta(hours=hours)
        visits.append(event(adt("A04", facility=facility, mrn=mrn, visit=f"ED{n}", patient_class="E", at=at,
                                admit=at, dx=("F11.20",), medi_cal_id="93000000B")))
    # Today's visit first, then the two earlier ones.
    await apply_all(engine, store, [visits[2], visits[0], visits[1]])
    assert active(await candidates(engine)) == [("SUD-ENS", "pending", "ED3")]


async def test_a_candidate_made_on_part_of_the_history_is_superseded_by_what_the_whole_history_proposes(
    engine: AsyncEngine,
) -> None:
    store = EnrollmentStore(rules())
    # Today's admission with SUD after three SUD-related ED visits: SUD-ENS on what has arrived.
    eds = []
    for n, days in enumerate((200, 120, 40), start=1):
        at = NOW - dt.timedelta(days=days)
        eds.append(event(adt("A04", visit=f"ED{n}", patient_class="E", at=at, admit=at, dx=("F11.20",))))
    today = stay(3, days_ago=0, dx=("F10.20",), discharged=False)
    await apply_all(engine, store, eds + today)
    assert active(await candidates(engine)) == [("SUD-ENS", "pending", "MRN0001-V3")]
    # Two earlier inpatient stays arrive late: in order, TOC (first by priority) was proposed.
    await apply_all(engine, store, stay(1, days_ago=100) + stay(2, days_ago=50))
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "MRN0001-V3")]
    assert [(c["program"], c["status"], c["status_reason"]) for c in found if c["status"] == "withdrawn"] == [
        ("SUD-ENS", "withdrawn", "superseded: facts arrived late")
    ]


async def test_a_late_cancel_of_an_earlier_stay_withdraws_the_candidate_it_made_possible(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    await apply_all(engine, store, stay(1, days_ago=100) + stay(2, days_ago=50)
                    + stay(3, days_ago=0, dx=("F10.20",), discharged=False))
    assert active(await candidates(engine)) == [("TOC", "pending", "MRN0001-V3")]
    # The second stay was entered in error (A11 sent the next day, arriving only now).
    cancel_at = NOW - dt.timedelta(days=49)
    await apply(engine, store, event(adt("A11", visit="MRN0001-V2", at=cancel_at, admit=NOW - dt.timedelta(days=50))))
    found = await candidates(engine)
    assert active(found) == []
    assert [c["status_reason"] for c in found] == ["superseded: facts arrived late"]


async def test_an_old_insurance_arriving_late_does_not_overwrite_todays(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    today = stay(3, days_ago=0, dx=("F10.20",), discharged=False, medi_cal_id=None)
    # Last spring the patient had commercial insurance (IN1 names a plan that is not Medi-Cal).
    history = []
    for ev in stay(1, days_ago=100, medi_cal_id=None) + stay(2, days_ago=50, medi_cal_id=None):
        history.append(ev.model_copy(update={"insurance": [ins.model_copy(update={"plan_id": "BLUE1",
                                                                                 "company_id": "BLUECO"})
                                                           for ins in ev.insurance]}))
    await apply_all(engine, store, today + history)
    assert active(await candidates(engine)) == [("TOC", "pending", "MRN0001-V3")]


async def test_an_a40_before_the_merged_mrns_own_events_joins_them_to_the_survivor(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    merge = event(adt("A40", mrn="NEW-1", prior_mrn="OLD-1", visit=None, at=NOW - dt.timedelta(days=1),
                      medi_cal_id=None))
    today = stay(3, days_ago=0, mrn="NEW-1", dx=("Z59.00",), medi_cal_id=None, discharged=False)
    old = stay(1, days_ago=90, mrn="OLD-1", medi_cal_id=None) + stay(2, days_ago=40, mrn="OLD-1", medi_cal_id=None)
    await apply_all(engine, store, [merge, *today, *old])
    async with engine.connect() as conn:
        persons = await conn.scalar(text("SELECT count(DISTINCT person_id) FROM encounter"))
    assert persons == 1
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "NEW-1-V3")]
    assert admissions_evidence(found[0]["decision"]) == 3


async def test_a_visit_number_reused_for_another_patient_is_its_own_encounter_and_a_finding(
    engine: AsyncEngine,
) -> None:
    store = EnrollmentStore(rules())
    at = NOW - dt.timedelta(hours=6)
    first = event(adt("A04", mrn="A-1", visit="V100", patient_class="E", at=at, admit=at, dx=("F11.20",),
                      medi_cal_id="91111111A"))
    # Another patient (another MRN and Medi-Cal id) under the same visit number, a day later.
    later = at + dt.timedelta(hours=20)
    second = event(adt("A04", mrn="B-1", visit="V100", patient_class="E", at=later, admit=later,
                       medi_cal_id="92222222B"))
    again = event(adt("A08", mrn="B-1", visit="V100", patient_class="E", at=later + dt.timedelta(hours=1),
                      admit=later, medi_cal_id="92222222B"))
    for ev in (first, second, again):
        await apply(engine, store, ev)
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT i.value, e.dx_flags, (SELECT count(*) FROM encounter_event v WHERE v.encounter_id = e.id) AS n "
            "FROM encounter e JOIN identity i ON i.key = e.identity_key ORDER BY i.value"))).all()
        findings = (await conn.execute(text(
            "SELECT facility, kind, count, first_seen, last_seen FROM feed_finding"))).all()
    assert [(r.value, sorted(r.dx_flags), r.n) for r in rows] == [
        ("A-1", ["mental_health", "sud"], 1), ("B-1", [], 2)
    ]
    assert [(f.facility, f.kind, f.count) for f in findings] == [("COUNTYGEN", "visit_number_reused", 1)]
    assert findings[0].first_seen == findings[0].last_seen


async def test_event_times_ahead_of_receipt_are_a_clock_finding_and_the_event_is_still_used(
    engine: AsyncEngine,
) -> None:
    store = EnrollmentStore(rules())
    received = NOW
    # A sender whose clock (or time zone) runs 8 hours ahead: local times read as if in the future.
    ahead = received + dt.timedelta(hours=8)
    for n in (1, 2):
        raw = adt("A04", facility="STMARY", visit=f"CLK{n}", patient_class="E", at=ahead, admit=ahead)
        await apply(engine, store, event(raw, received_at=received))
    # Within the margin (a few minutes of drift): no finding.
    raw = adt("A04", facility="COUNTYGEN", visit="CLK3", patient_class="E", at=received + dt.timedelta(minutes=2),
              admit=received)
    await apply(engine, store, event(raw, received_at=received))
    async with engine.connect() as conn:
        findings = (await conn.execute(text("SELECT facility, kind, count FROM feed_finding"))).all()
        encounters = await conn.scalar(text("SELECT count(*) FROM encounter"))
    assert [(f.facility, f.kind, f.count) for f in findings] == [("STMARY", "clock_ahead", 2)]
    assert encounters == 3


async def test_a_chain_of_early_merges_brings_every_mrns_stays_to_the_survivor(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    day = dt.timedelta(days=1)
    # OLD-2 was merged into OLD-1, then OLD-1 into NEW-1; the merges come before any stay.
    first = event(adt("A40", mrn="OLD-1", prior_mrn="OLD-2", visit=None, at=NOW - 3 * day, medi_cal_id=None))
    second = event(adt("A40", mrn="NEW-1", prior_mrn="OLD-1", visit=None, at=NOW - 2 * day, medi_cal_id=None))
    old = stay(1, days_ago=90, mrn="OLD-2", medi_cal_id=None) + stay(2, days_ago=40, mrn="OLD-1", medi_cal_id=None)
    today = stay(3, days_ago=0, mrn="NEW-1", dx=("Z59.00",), medi_cal_id=None, discharged=False)
    # OLD-2's stay arrives between the two merges, OLD-1's after both, today's in the middle.
    await apply_all(engine, store, [first, old[0], old[1], second, *today, old[2], old[3]])
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(DISTINCT person_id) FROM encounter")) == 1
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "NEW-1-V3")]
    assert admissions_evidence(found[0]["decision"]) == 3


async def test_a_link_by_hand_decides_the_joined_person_again_and_an_unlink_undoes_it(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    # One patient under two MRNs without a Medi-Cal id to join them: no candidate on either.
    await apply_all(engine, store, stay(1, days_ago=100, facility="STMARY", mrn="S-9", medi_cal_id=None)
                    + stay(2, days_ago=50, facility="STMARY", mrn="S-9", medi_cal_id=None)
                    + stay(3, days_ago=0, mrn="C-9", dx=("F10.20",), medi_cal_id=None, discharged=False))
    assert active(await candidates(engine)) == []
    async with engine.begin() as conn:
        await store.link(conn, identity_key("STMARY", "S-9"), identity_key("COUNTYGEN", "C-9"), actor="olga.ops",
                         reason="same patient, checked by phone", now=NOW)
    found = await candidates(engine)
    assert active(found) == [("TOC", "pending", "C-9-V3")] and admissions_evidence(found[0]["decision"]) == 3
    # The link was wrong after all: the candidate made on the other MRN's history goes.
    async with engine.begin() as conn:
        await store.unlink(conn, identity_key("STMARY", "S-9"), actor="olga.ops", reason="not the same person",
                           now=NOW)
    assert active(await candidates(engine)) == []
    assert [c["status_reason"] for c in await candidates(engine)] == ["superseded: facts arrived late"]


async def test_a_superseded_candidates_slot_goes_to_the_queue_and_its_replacement_takes_its_own(
    engine: AsyncEngine,
) -> None:
    store = EnrollmentStore(rules(SUD_ENS=1))
    # Two patients qualify for SUD-ENS on what has arrived; one slot: the second waits.
    for mrn, mc in (("X-1", "91000011A"), ("Y-1", "91000022A")):
        eds = []
        for n, days in enumerate((200, 120, 40), start=1):
            at = NOW - dt.timedelta(days=days)
            eds.append(event(adt("A04", mrn=mrn, visit=f"{mrn}-ED{n}", patient_class="E", at=at, admit=at,
                                 dx=("F11.20",), medi_cal_id=mc)))
        await apply_all(engine, store, eds + stay(3, days_ago=0, mrn=mrn, dx=("F10.20",), medi_cal_id=mc,
                                                  discharged=False))
    assert active(await candidates(engine)) == [("SUD-ENS", "pending", "X-1-V3"), ("SUD-ENS", "queued", "Y-1-V3")]
    # X's earlier stays arrive late: in order X was a TOC candidate, so the SUD-ENS slot was Y's.
    await apply_all(engine, store, stay(1, days_ago=100, mrn="X-1", medi_cal_id="91000011A")
                    + stay(2, days_ago=50, mrn="X-1", medi_cal_id="91000011A"))
    assert active(await candidates(engine)) == [("SUD-ENS", "pending", "Y-1-V3"), ("TOC", "pending", "X-1-V3")]
