"""The enrollment store against the real PostgreSQL: history, identities, candidates, capacity.

Events come from hand-made HL7 messages through the listener's own intake
(tests/adt_builder.py); each test has its own database.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.model import Flag
from enrollment_svc.rules import Rules, rules_from_text
from enrollment_svc.store import Applied, EnrollmentStore, identity_key
from schemas.adt_event import AdtEventV1
from schemas.enrollment import EnrollmentCandidateV1, EnrollmentEventV1
from services.db import create_engine
from tests.adt_builder import adt, event

PT = dt.timezone(dt.timedelta(hours=-8))
NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=PT)

RULES_YAML = """
version: "test-1"
site:
  facilities:
    COUNTYGEN: {kind: general_acute, participating: true}
    STMARY: {kind: general_acute, participating: true}
    PSYCHHOSP: {kind: psychiatric, participating: true}
    SOBER1: {kind: sobering_center}
  psychiatric_services: [PSY]
  medi_cal_plan_ids: [MCLAC, CADHCS]
  county_zip_prefixes: ["900", "901"]
value_sets:
  smi: {include: [F20, F21, F22, F23, F24, F25, F28, F29, F31, F322, F323, F332, F333]}
  sud: {include: [F10, F11, F12, F13, F14, F15, F16, F18, F19], exclude: [F1011, F1021]}
  overdose: {include: [T40, T424, T436]}
  homelessness: {include: [Z590]}
  incarceration: {include: [Z651]}
  acsc: {include: [E10, E11, J44, J45, I50, I10]}
  mental_health: {include: [F]}
programs:
  TOC: {capacity: 300}
  ISR: {capacity: 240}
  SUD-ENS: {capacity: 720}
"""


def rules(**capacity: int) -> Rules:
    base = rules_from_text(RULES_YAML)
    programs = {name: spec.model_copy(update={"capacity": capacity.get(name.replace("-", "_"), spec.capacity)})
                for name, spec in base.programs.items()}
    return base.model_copy(update={"programs": programs})


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


async def apply(engine: AsyncEngine, store: EnrollmentStore, ev: AdtEventV1, now: dt.datetime = NOW) -> Applied:
    async with engine.begin() as conn:
        await store.sync_capacity(conn)
        return await store.apply_adt_event(conn, ev, now)


def stay(n: int, *, days_ago: int, facility: str = "COUNTYGEN", mrn: str = "MRN0001", dx: tuple[str, ...] = (),
         discharged: bool = True, **kw: object) -> list[AdtEventV1]:
    """An inpatient stay: A01, then A03 one day later when discharged."""
    admit = NOW - dt.timedelta(days=days_ago)
    msgs = [adt("A01", facility=facility, mrn=mrn, visit=f"{mrn}-V{n}", at=admit, admit=admit, dx=dx, **kw)]  # type: ignore[arg-type]
    if discharged:
        out = admit + dt.timedelta(days=1)
        msgs.append(adt("A03", facility=facility, mrn=mrn, visit=f"{mrn}-V{n}", at=out, admit=admit, discharge=out,
                        dx=dx, **kw))  # type: ignore[arg-type]
    return [event(m) for m in msgs]


async def outbox(engine: AsyncEngine, topic: str) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT payload FROM outbox WHERE topic = :t ORDER BY id"), {"t": topic})).all()
    return [json.loads(bytes(r.payload)) for r in rows]


async def test_third_admission_in_six_months_with_sud_makes_one_toc_candidate(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=150) + stay(2, days_ago=60):
        applied = await apply(engine, store, ev)
        assert applied.candidate_id is None
    third = stay(3, days_ago=0, dx=("F10.20",), discharged=False)[0]
    applied = await apply(engine, store, third)
    assert applied.evaluation is not None and applied.evaluation.proposed == "TOC"
    assert applied.candidate_status == "pending"

    # The same event again (Kafka redelivery) changes nothing.
    again = await apply(engine, store, third)
    assert again.duplicate and again.candidate_id is None

    candidates = [EnrollmentCandidateV1.model_validate(p) for p in await outbox(engine, "enrollment.candidates")]
    assert len(candidates) == 1
    c = candidates[0]
    assert c.program == "TOC" and c.candidate_id == applied.candidate_id
    assert c.trigger is not None and c.trigger.visit_number == "MRN0001-V3" and c.trigger.facility == "COUNTYGEN"
    assert {i.value for i in c.identifiers} == {"MRN0001"}
    assert c.medi_cal_id == "95000000A"
    met = {cr.name: cr for cr in c.criteria if cr.met}
    admissions = next(cr for name, cr in met.items() if name.startswith("inpatient_admissions"))
    assert len(admissions.evidence) == 3
    transitions = [EnrollmentEventV1.model_validate(p) for p in await outbox(engine, "enrollment.events")]
    assert [(t.from_status, t.to_status) for t in transitions] == [(None, "queued"), ("queued", "pending")]


async def test_two_admissions_are_not_enough_and_old_admissions_fall_out_of_the_window(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    # Hypertension (an ambulatory-care-sensitive condition) meets TOC's "one of"; no SUD, so no SUD-ENS.
    for ev in stay(1, days_ago=400, dx=("I10",)) + stay(2, days_ago=30, dx=("I10",)):
        await apply(engine, store, ev)
    applied = await apply(engine, store, stay(3, days_ago=0, dx=("I10",), discharged=False)[0])
    assert applied.evaluation is not None
    toc = next(d for d in applied.evaluation.decisions if d.program == "TOC")
    assert not toc.eligible
    assert applied.candidate_id is None


async def test_out_of_order_and_duplicate_events_end_in_the_same_encounter(engine: AsyncEngine) -> None:
    admit = NOW - dt.timedelta(hours=5)
    a01 = event(adt("A01", visit="V9", at=admit, admit=admit))
    a08 = event(adt("A08", visit="V9", at=admit + dt.timedelta(hours=1), admit=admit, dx=("J44.1",)))
    a03 = event(adt("A03", visit="V9", at=admit + dt.timedelta(hours=3), admit=admit,
                    discharge=admit + dt.timedelta(hours=3), dx=("J44.1",)))
    states = []
    for order in ([a01, a08, a03], [a08, a03, a01, a08, a01]):
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE encounter_event, encounter, identity, person, processed_event CASCADE"))
        store = EnrollmentStore(rules())
        for ev in order:
            await apply(engine, store, ev)
        async with engine.connect() as conn:
            row = (await conn.execute(text(
                "SELECT kind, status, start_at, end_at, dx_flags, (SELECT count(*) FROM encounter_event) AS n "
                "FROM encounter"))).one()
        states.append(tuple(row))
    assert states[0] == states[1]
    assert states[0][1] == "discharged" and states[0][5] == 3


async def test_same_medi_cal_id_at_two_hospitals_is_one_person(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    a = await apply(engine, store, stay(1, days_ago=20, facility="COUNTYGEN", mrn="C-1")[0])
    b = await apply(engine, store, stay(2, days_ago=10, facility="STMARY", mrn="S-9")[0])
    assert a.person_id == b.person_id
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(DISTINCT person_id) FROM encounter")) == 1


async def test_a40_merge_moves_history_without_double_counting(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=90, mrn="OLD-1", medi_cal_id=None) + stay(2, days_ago=40, mrn="NEW-1", medi_cal_id=None):
        await apply(engine, store, ev)
    merge = event(adt("A40", mrn="NEW-1", prior_mrn="OLD-1", visit=None, at=NOW - dt.timedelta(days=1),
                      medi_cal_id=None))
    for _ in range(2):  # a redelivered merge is a no-op
        await apply(engine, store, merge)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT identity_key, person_id FROM encounter"))).all()
        survivor = identity_key("COUNTYGEN", "NEW-1")
        assert {r.identity_key for r in rows} == {survivor}
        assert len({r.person_id for r in rows}) == 1
    # The third admission counts both merged stays once each: a TOC candidate (3 of 3).
    applied = await apply(engine, store, stay(3, days_ago=0, mrn="NEW-1", dx=("Z59.00",), medi_cal_id=None,
                                              discharged=False)[0])
    assert applied.evaluation is not None and applied.evaluation.proposed == "TOC"
    toc = next(d for d in applied.evaluation.decisions if d.program == "TOC")
    counted = next(c for c in toc.criteria if c.name.startswith("inpatient_admissions"))
    assert len(counted.evidence) == 3 and len(set(counted.evidence)) == 3


async def test_backfilled_history_counts_but_makes_no_candidate(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    # A hospital joins and sends last spring's stays: all three qualify, none is current.
    events = [ev for n, days in ((1, 300), (2, 250), (3, 200)) for ev in stay(n, days_ago=days, dx=("F10.20",))]
    results = [await apply(engine, store, ev) for ev in events]
    assert all(r.candidate_id is None for r in results)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM encounter")) == 3


async def test_full_program_queues_in_order_and_a_freed_slot_promotes_the_oldest(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules(TOC=1))
    made = []
    for mrn, mc in (("P-1", "91000001A"), ("P-2", "91000002A"), ("P-3", "91000003A")):
        for ev in stay(1, days_ago=100, mrn=mrn, medi_cal_id=mc) + stay(2, days_ago=50, mrn=mrn, medi_cal_id=mc):
            await apply(engine, store, ev)
        applied = await apply(engine, store, stay(3, days_ago=0, mrn=mrn, medi_cal_id=mc, dx=("F10.20",),
                                                  discharged=False)[0])
        made.append(applied)
    assert [a.candidate_status for a in made] == ["pending", "queued", "queued"]
    async with engine.begin() as conn:
        assert made[0].candidate_id is not None
        await store.transition(conn, made[0].candidate_id, "decline", actor="nurse", reason="refused", now=NOW)
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(text("SELECT id, status FROM candidate"))).all())
    assert statuses[made[0].candidate_id] == "declined"
    assert statuses[made[1].candidate_id] == "pending"
    assert statuses[made[2].candidate_id] == "queued"
    published = [p["candidate_id"] for p in await outbox(engine, "enrollment.candidates")]
    assert published == [str(made[0].candidate_id), str(made[1].candidate_id)]


async def test_one_candidate_per_person_and_a_declined_stay_is_not_proposed_again(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=100) + stay(2, days_ago=50):
        await apply(engine, store, ev)
    first = await apply(engine, store, stay(3, days_ago=0, dx=("F10.20",), discharged=False)[0])
    assert first.candidate_id is not None
    # An update of the same stay while the candidate is pending: no second candidate.
    upd = event(adt("A08", visit="MRN0001-V3", at=NOW + dt.timedelta(hours=2), admit=NOW, dx=("F10.20", "I10")))
    assert (await apply(engine, store, upd, NOW + dt.timedelta(hours=2))).candidate_id is None
    async with engine.begin() as conn:
        await store.transition(conn, first.candidate_id, "decline", actor="nurse", reason="refused", now=NOW)
    # The discharge re-check of the declined stay proposes nothing either.
    out = NOW + dt.timedelta(days=2)
    a03 = event(adt("A03", visit="MRN0001-V3", at=out, admit=NOW, discharge=out, dx=("F10.20",)))
    assert (await apply(engine, store, a03, out)).candidate_id is None
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM candidate")) == 1


async def test_partner_flag_makes_a_sud_ens_candidate(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    ed = NOW - dt.timedelta(hours=3)
    await apply(engine, store, event(adt("A04", visit="E1", patient_class="E", at=ed, admit=ed, dx=("F11.20",),
                                         birth="20100101")))
    flag = Flag(
        id=str(uuid.uuid4()), kind="drug_court_referral", source="probation", effective=NOW - dt.timedelta(days=2)
    )
    async with engine.begin() as conn:
        applied = await store.add_flag(conn, identity_key("COUNTYGEN", "MRN0001"), flag, recorded_by="probation-feed",
                                       now=NOW)
    assert applied.evaluation is not None and applied.evaluation.proposed == "SUD-ENS"
    assert applied.candidate_status == "pending"
    sud = next(d for d in applied.evaluation.decisions if d.program == "SUD-ENS")
    assert any(flag.id in c.evidence for c in sud.criteria if c.met)


async def test_unknown_identity_for_a_flag_is_a_lookup_error(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    flag = Flag(id=str(uuid.uuid4()), kind="foster_care", source="dcfs", effective=NOW)
    async with engine.begin() as conn:
        with pytest.raises(LookupError):
            await store.add_flag(conn, identity_key("X", "nobody"), flag, recorded_by="dcfs", now=NOW)


async def test_pending_candidates_expire_and_free_their_slot(engine: AsyncEngine) -> None:
    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=100) + stay(2, days_ago=50):
        await apply(engine, store, ev)
    made = await apply(engine, store, stay(3, days_ago=0, dx=("F10.20",), discharged=False)[0])
    async with engine.begin() as conn:
        assert await store.expire_due(conn, NOW + dt.timedelta(days=13)) == 0
    async with engine.begin() as conn:
        assert await store.expire_due(conn, NOW + dt.timedelta(days=15)) == 1
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM candidate WHERE id = :c"), {"c": made.candidate_id})
    assert status == "expired"


async def test_replay_reports_what_a_rule_change_would_change_and_applies_only_when_asked(engine: AsyncEngine) -> None:
    from wpc.tools.replay import replay

    store = EnrollmentStore(rules())
    for ev in stay(1, days_ago=100, dx=("I10",)) + stay(2, days_ago=0, dx=("I10",), discharged=False):
        await apply(engine, store, ev)
    # Staff drop hypertension from the avoidable-admission value set.
    stricter = rules()
    value_sets = dict(stricter.value_sets)
    value_sets["acsc"] = value_sets["acsc"].model_copy(update={"include": ("E10", "E11", "J44", "J45", "I50")})
    stricter = stricter.model_copy(update={"value_sets": value_sets, "version": "test-2"})
    async with engine.begin() as conn:
        report = await replay(conn, stricter, NOW, apply=False)
    assert report["dry_run"] and report["encounters"] == 2
    assert report["encounters_with_changed_dx_flags"] == 2
    assert report["persons_with_current_encounters"] == 1
    async with engine.connect() as conn:
        flags = (await conn.execute(text("SELECT dx_flags FROM encounter"))).scalars().all()
    assert all("acsc" in f for f in flags)  # the dry run wrote nothing
    async with engine.begin() as conn:
        await replay(conn, stricter, NOW, apply=True)
    async with engine.connect() as conn:
        flags = (await conn.execute(text("SELECT dx_flags FROM encounter"))).scalars().all()
    assert not any("acsc" in f for f in flags)


async def test_an_undecodable_record_is_kept_and_skipped_and_the_rest_applied(engine: AsyncEngine) -> None:
    from aiokafka import ConsumerRecord

    from enrollment_svc.handler import AdtEventHandler

    good = stay(1, days_ago=3)[0]

    def record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord(topic="adt.events", partition=0, offset=offset, timestamp=0, timestamp_type=0,
                              key=b"k", value=value, checksum=None, serialized_key_size=1,
                              serialized_value_size=len(value), headers=())

    handler = AdtEventHandler(engine, EnrollmentStore(rules()), lanes=1, clock=lambda: NOW)
    batch = [record(7, b'{"not": "an adt event"}'), record(8, good.model_dump_json().encode())]
    await handler(batch)
    await handler(batch)  # redelivered: kept once, applied once
    async with engine.connect() as conn:
        kept = (await conn.execute(text('SELECT topic, partition, "offset", value FROM undecodable_event'))).all()
        applied = await conn.scalar(text("SELECT count(*) FROM processed_event"))
    assert [(k.topic, k.partition, k.offset, bytes(k.value)) for k in kept] == [
        ("adt.events", 0, 7, b'{"not": "an adt event"}')
    ]
    assert applied == 1
