"""`wpc bench enroll`: decisions per second and event → decision latency on a loaded county.

1. Loads a synthetic county into a fresh database (default 1,000,000 persons, each with
   one hospital identity, and 5,000,000 past encounters spread over two years), with
   SQL `generate_series`, so the load itself is quick and no PHI exists.
2. Replays a live-rate feed of admissions (A01) for random persons at ``--rate``
   events/s for ``--duration`` seconds, open loop: each event is applied by the
   service's own handler (`AdtEventHandler.apply`: dedupe, identity, encounter fold,
   window counts, decision, candidate and outbox in one transaction) on ``--lanes``
   concurrent connections, the way the Kafka consumer applies them.
3. Prints decisions/s, p50/p99/max latency from the event's scheduled time to its
   commit, candidates made, then one JSON line with the same figures.

Kafka is left out on purpose: the broker's delivery latency is the same with 10 or
10,000,000 encounters; what this measures is that deciding does not grow with history.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import time
import uuid
from typing import Any

import asyncpg

from adt_listener.normalize import patient_key
from enrollment_svc.handler import AdtEventHandler
from enrollment_svc.rules import Rules
from enrollment_svc.service import rules_of
from enrollment_svc.store import EnrollmentStore
from schemas.adt_event import AdtEventV1, Identifier, Patient, Visit, event_id_for
from services import db
from services.embedded import EmbeddedPostgres
from services.settings import Settings

# A county's mix, roughly (an assumption, not data): per 100 encounters 40 ED visits, 35
# outpatient, 20 inpatient, 3 psychiatric inpatient, 2 sobering center; diagnosis flags on
# 10 (SUD), 5 (mental health), 3 (ACSC), 2 (SUD and homelessness); dates over two years.
_ENCOUNTERS = """
INSERT INTO encounter (id, facility, visit_number, identity_key, person_id, kind, status,
                       start_at, end_at, dx_flags, last_event_time)
SELECT md5('e' || g)::uuid, $1, 'BV' || g,
       substr(encode(sha256(convert_to('BENCH|M' || (g % $2 + 1), 'UTF8')), 'hex'), 1, 32),
       md5('p' || (g % $2 + 1))::uuid,
       CASE WHEN k < 40 THEN 'ed' WHEN k < 75 THEN 'outpatient' WHEN k < 95 THEN 'inpatient'
            WHEN k < 98 THEN 'psych_inpatient' ELSE 'sobering' END,
       'discharged', now() - d * interval '1 day', now() - d * interval '1 day' + interval '2 days',
       CAST(CASE WHEN f < 10 THEN '{sud}' WHEN f < 15 THEN '{mental_health}' WHEN f < 18 THEN '{acsc}'
                 WHEN f < 20 THEN '{sud,homelessness}' ELSE '{}' END AS text[]),
       now() - d * interval '1 day'
FROM (SELECT g, (hashint4(g) & 2147483647) % 100 AS k, (hashint4(-g) & 2147483647) % 100 AS f,
             (hashint4(g + 1) & 2147483647) % 730 AS d
      FROM generate_series(1, $3) g) AS s
"""


async def load_county(dsn: str, persons: int, encounters: int, facility: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(
            f"""INSERT INTO person (id, medi_cal, county_resident, birth_date)
            SELECT md5('p' || g)::uuid, true, true, date '1950-01-01' + (g % 18000)
            FROM generate_series(1, {persons}) g"""
        )
        await conn.execute(
            f"""INSERT INTO identity (key, person_id, authority, value, type_code)
            SELECT substr(encode(sha256(convert_to('BENCH|M' || g, 'UTF8')), 'hex'), 1, 32),
                   md5('p' || g)::uuid, 'BENCH', 'M' || g, 'MR'
            FROM generate_series(1, {persons}) g"""
        )
        await conn.execute(_ENCOUNTERS, facility, persons, encounters)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def _admission(index: int, person: int, facility: str, now: dt.datetime) -> AdtEventV1:
    control = f"BENCH{index}"
    return AdtEventV1(
        event_id=event_id_for(facility, control),
        message_id=uuid.uuid4(),
        message_type="ADT",
        trigger_event="A01",
        hl7_version="2.5.1",
        processing_id="P",
        control_id=control,
        sending_facility=facility,
        message_time=now,
        event_time=now,
        received_at=now,
        patient=Patient(
            patient_key=patient_key("BENCH", f"M{person}"),
            identifiers=[Identifier(value=f"M{person}", assigning_authority="BENCH", type_code="MR")],
            birth_date=dt.date(1970, 1, 1),
        ),
        visit=Visit(patient_class="I", visit_number=f"LIVE{index}", admit_time=now, hospital_service="MED"),
        diagnoses=[],
    )


async def replay_live(
    url: str, rules: Rules, persons: int, rate: float, duration: float, lanes: int, facility: str
) -> dict[str, Any]:
    engine = db.create_engine(url, pool_size=lanes + 2)
    store = EnrollmentStore(rules)
    handler = AdtEventHandler(engine, store, lanes=lanes)
    async with engine.begin() as conn:
        await store.sync_capacity(conn)
    rng = random.Random(7)
    total = int(rate * duration)
    queue: asyncio.Queue[tuple[float, AdtEventV1] | None] = asyncio.Queue()
    latencies: list[float] = []
    candidates = 0

    async def worker() -> None:
        nonlocal candidates
        while (item := await queue.get()) is not None:
            scheduled, event = item
            applied = await handler.apply(event)
            latencies.append(time.perf_counter() - scheduled)
            candidates += applied.candidate_id is not None

    workers = [asyncio.create_task(worker()) for _ in range(lanes)]
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, _admission(i, rng.randint(1, persons), facility, dt.datetime.now(dt.UTC))))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    await engine.dispose()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "events": total,
        "decisions_per_s": round(total / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "candidates": candidates,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--encounters", type=int, default=5_000_000)
    parser.add_argument("--rate", type=float, default=500.0, help="live events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of live feed")
    parser.add_argument("--lanes", type=int, default=8, help="events applied concurrently")


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    rules = rules_of(settings)
    facility = next(f for f, spec in rules.site.facilities.items() if spec.participating)
    pg: EmbeddedPostgres | None = None
    base = settings.database_url
    if not base:
        pg = EmbeddedPostgres(settings.data_dir / "bench-pg")
        base = await asyncio.to_thread(pg.start)
    try:
        url, name = await db.create_scratch_database(base, "wpc_bench_enroll")
        try:
            await db.migrate_url(url)
            dsn = db.normalize_url(url).replace("postgresql+asyncpg", "postgresql", 1)
            load_s = await load_county(dsn, args.persons, args.encounters, facility)
            live = await replay_live(url, rules, args.persons, args.rate, args.duration, args.lanes, facility)
        finally:
            await db.drop_database(url, name)
    finally:
        if pg is not None:
            await asyncio.to_thread(pg.stop)
    return {"bench": "enroll", "persons": args.persons, "encounters": args.encounters, "load_s": round(load_s, 1),
            "rate_per_s": args.rate, "duration_s": args.duration, "lanes": args.lanes, **live,
            "goal_p99_lt_100ms_at_500": (
                "NOT RUN (rate below 500/s)" if args.rate < 500 else "PASS" if live["p99_ms"] < 100 else "FAIL"
            )}


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(_main(args))
    print(f"wpc bench enroll: {report['persons']:,} persons, {report['encounters']:,} encounters "
          f"(loaded in {report['load_s']} s)")
    print(f"live feed {report['rate_per_s']:.0f} events/s for {report['duration_s']:.0f} s, {report['lanes']} lanes: "
          f"{report['decisions_per_s']} decisions/s, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, "
          f"max {report['max_ms']} ms, candidates {report['candidates']}")
    print(f"goal: p99 < 100 ms at 500 events/s ........ {report['goal_p99_lt_100ms_at_500']}")
    print(json.dumps(report))
    return 0
