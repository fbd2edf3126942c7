"""`wpc bench enroll`: decisions per second and event → decision latency on a loaded county.

1. Loads a synthetic county into a fresh database (default 1,000,000 persons, each with
   one hospital identity, and 5,000,000 past encounters spread over two years), with
   SQL `generate_series`, so the load itself is quick and no PHI exists (secondary
   indexes built after the rows, foreign-key triggers skipped when the user may, then
   VACUUM ANALYZE and a CHECKPOINT: the county is in the state of a live one, not of a
   bulk load still being written out).
2. Replays a live-rate feed of admissions (A01) for random persons at ``--rate``
   events/s for ``--duration`` seconds, open loop. Each event goes to the lane of its
   patient key, as the Kafka consumer routes records (`handler.lane_of`); each lane
   applies what has queued up for it with the service's own handler
   (`AdtEventHandler.lane`: dedupe, identity, encounter fold, window counts, decision,
   candidate and outbox, group-committed), the way the consumer applies a fetched batch.
   With ``--late-share``, that share of the events are instead month-old ED visits of
   persons admitted earlier in the run, arriving now: late events, each making the
   service decide its person's current triggers again (the path a backfill or the
   catch-up after an outage takes), so its cost shows beside the in-order path's.
3. Prints decisions/s, p50/p99/max latency from the event's scheduled time to its
   commit, candidates made, mean group size, CPU per event of this process and of the
   lanes' PostgreSQL backends, how busy the whole machine was and
   how much of it the host took (steal: `bench.machine`), the longest garbage
   collector pause (wall and CPU time), then one JSON line with the same figures. On a
   shared machine the CPU figures say whether a slow run was this code or its
   neighbours. What was built before the live feed (imports, the feed itself) is frozen
   out of the collector's sight first, as the service freezes its start-up
   (`services.lifecycle.freeze_heap`).

Kafka is left out on purpose: the broker's delivery latency is the same with 10 or
10,000,000 encounters; what this measures is that deciding does not grow with history.

Iterating without reloading: ``--keep-db NAME`` loads into database NAME and keeps it;
``--reuse-db NAME`` replays against it without loading (each run's events and visits
are new, so earlier runs' rows only add history, as a live feed does). The default is
a scratch database, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import random
import secrets
import time
import uuid
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench import machine
from enrollment_svc.handler import AdtEventHandler, lane_of
from enrollment_svc.rules import Rules
from enrollment_svc.service import rules_of
from enrollment_svc.settings import EnrollmentSettings
from enrollment_svc.store import EnrollmentStore
from schemas.adt_event import AdtEventV1, Identifier, Patient, Visit, event_id_for, patient_key
from services import db, lifecycle
from services.embedded import EmbeddedPostgres
from services.settings import load_settings

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


# Secondary indexes of the loaded tables, dropped during the load and built afterwards (one
# sort each instead of millions of inserts); indexes that back a constraint stay.
_SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes i
WHERE i.schemaname = current_schema() AND i.tablename IN ('person', 'identity', 'encounter')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
"""


async def load_county(dsn: str, persons: int, encounters: int, facility: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        # The rows are consistent by construction: skip the foreign-key triggers when allowed
        # (a superuser's setting; without it the load is only slower).
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET session_replication_role = replica")
        indexes = await conn.fetch(_SECONDARY_INDEXES)
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
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
        for index in indexes:
            await conn.execute(index["indexdef"])
        # A county that has been live for years has been vacuumed: visibility map and hint bits
        # set, as autovacuum leaves them, rather than first touched by the live feed.
        await conn.execute("VACUUM (ANALYZE) person, identity, encounter")
        await conn.execute("ANALYZE")
        # Nor is it in the middle of writing out a bulk load: without this, the checkpoints the
        # load's WAL sets off run through the live feed and their page images inflate every commit.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
        # What was loaded, for --reuse-db (a database comment: no table the schema does not know).
        name = await conn.fetchval("SELECT current_database()")
        size = json.dumps({"persons": persons, "encounters": encounters})
        await conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{size}'")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def loaded_size(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        comment = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    if not comment:
        raise SystemExit("wpc bench enroll: --reuse-db names a database no --keep-db run loaded")
    size: dict[str, int] = json.loads(comment)
    return size


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process on this machine (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _backends_cpu_s(dsn: str) -> float:
    """CPU seconds of the database's other backends so far: the lanes' (PostgreSQL on this machine)."""
    conn = await asyncpg.connect(dsn)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return sum(_process_cpu_s(r["pid"]) for r in pids)


class _GcPauses:
    """Longest garbage-collector pause while running (a stop-the-world pause delays every lane),
    in wall time and in this thread's CPU time: on a shared machine the difference is the
    time the collection waited for a core, not work it did."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.generation = -1  # the generation the longest pause collected
        self.total_cpu = 0.0  # CPU of every collection: what the collector costs, beside its worst stall
        self.collections = 0
        self._started = 0.0
        self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._started_cpu = time.thread_time()
        else:
            pause = time.perf_counter() - self._started
            if pause > self.longest:
                self.longest, self.generation = pause, info["generation"]
            cpu = time.thread_time() - self._started_cpu
            self.longest_cpu = max(self.longest_cpu, cpu)
            self.total_cpu += cpu
            self.collections += 1


def _admission(run: str, index: int, person: int, facility: str, now: dt.datetime) -> AdtEventV1:
    control = f"BENCH{run}-{index}"
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
        visit=Visit(patient_class="I", visit_number=f"LIVE{run}-{index}", admit_time=now, hospital_service="MED"),
        diagnoses=[],
    )


def _backfill(run: str, index: int, person: int, facility: str, at: dt.datetime) -> AdtEventV1:
    """An ED visit of a month ago, arriving now: older than the person's admission in this run,
    so it is late and the person's current triggers are decided again (`enrollment_svc.decide`)."""
    event = _admission(run, index, person, facility, at)
    assert event.visit is not None
    visit = event.visit.model_copy(update={"patient_class": "E", "visit_number": f"LATE{run}-{index}"})
    return event.model_copy(update={"trigger_event": "A04", "visit": visit})


async def replay_live(
    url: str, rules: Rules, persons: int, rate: float, duration: float, lanes: int, group_max: int, facility: str,
    late_share: float = 0.0,
) -> dict[str, Any]:
    engine = db.create_engine(url, pool_size=lanes + 2)
    store = EnrollmentStore(rules)
    handler = AdtEventHandler(engine, store, lanes=lanes, group_max=group_max)
    async with engine.begin() as conn:
        await store.sync_capacity(conn)
    run = secrets.token_hex(3)
    # Persons drawn afresh each run: with --reuse-db, a fixed draw would pile every run's
    # admissions onto the same persons and make them candidates more and more often.
    rng = random.Random(run)
    total = int(rate * duration)
    # The feed is made before it starts, as the JSON records Kafka would deliver (event times
    # spaced as scheduled), so the load generator spends nothing per event while it runs and
    # the lanes pay for decoding, as the consumer's do.
    t0 = dt.datetime.now(dt.UTC)
    feed: list[tuple[int, bytes]] = []
    admitted: list[int] = []
    late = 0
    for i in range(total):
        at = t0 + dt.timedelta(seconds=i / rate)
        if admitted and rng.random() < late_share:
            person = rng.choice(admitted)
            event = _backfill(run, i, person, facility, at - dt.timedelta(days=30))
            late += 1
        else:
            person = rng.randint(1, persons)
            event = _admission(run, i, person, facility, at)
            admitted.append(person)
        feed.append((lane_of(patient_key("BENCH", f"M{person}").encode(), lanes), event.model_dump_json().encode()))
    queues: list[asyncio.Queue[tuple[float, bytes] | None]] = [asyncio.Queue() for _ in range(lanes)]
    latencies: list[float] = []
    groups: list[int] = []
    candidates = 0

    async def lane_worker(queue: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        nonlocal candidates
        async with handler.lane() as lane:
            done = False
            while not done:
                item = await queue.get()
                batch: list[tuple[float, bytes]] = []
                # What queued up while the lane was busy is applied together, as a fetched batch is.
                while item is not None:
                    batch.append(item)
                    if len(batch) >= group_max or queue.empty():
                        break
                    item = queue.get_nowait()
                done = item is None
                if not batch:
                    continue
                applied = await lane.apply([AdtEventV1.model_validate_json(value) for _, value in batch])
                committed = time.perf_counter()
                latencies.extend(committed - scheduled for scheduled, _ in batch)
                groups.append(len(batch))
                candidates += sum(a.candidate_id is not None for a in applied)

    # As the service does once started (`EnrollmentService`): what was built so far, here the
    # feed too, is out of the collector's sight, so a full collection walks only what the lanes make.
    lifecycle.freeze_heap()
    workers = [asyncio.create_task(lane_worker(q)) for q in queues]
    cpu = time.process_time()
    ticks = machine.ticks()
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    start = time.perf_counter()
    for i, (lane, value) in enumerate(feed):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queues[lane].put_nowait((scheduled, value))
    for q in queues:
        q.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    gc.callbacks.remove(pauses)
    db_cpu = await _backends_cpu_s(_dsn(url))  # before the pool closes the lanes' connections
    cpu = time.process_time() - cpu
    shares = machine.shares(ticks, machine.ticks())
    await engine.dispose()
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:  # --duration 0: load only (with --keep-db)
            return 0.0
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "events": total,
        "late_events": late,
        "decisions_per_s": round(total / elapsed, 1) if total else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "candidates": candidates,
        "mean_group": round(sum(groups) / len(groups), 2) if groups else 0,
        # This process's CPU per event (lanes, handler, store, and the idle feed loop): with
        # PostgreSQL on the same two cores, the rest of the machine's CPU is the database's.
        "bench_cpu_ms_per_event": round(cpu * 1000 / total, 3) if total else 0.0,
        "db_cpu_ms_per_event": round(db_cpu * 1000 / total, 3) if total else 0.0,
        **shares.as_json(),
        "gc_longest_pause_ms": round(pauses.longest * 1000, 2),
        "gc_longest_pause_cpu_ms": round(pauses.longest_cpu * 1000, 2),
        "gc_longest_pause_generation": pauses.generation,
        "gc_collections": pauses.collections,
        "gc_cpu_ms_per_event": round(pauses.total_cpu * 1000 / total, 4) if total else 0.0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--encounters", type=int, default=5_000_000)
    parser.add_argument("--rate", type=float, default=500.0, help="live events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of live feed")
    parser.add_argument(
        "--lanes", type=int, default=4,
        help="lanes (connections) applying events concurrently; 4 suits a 2-CPU machine better than the "
        "service's default WPC_ENROLLMENT_LANES=8 (fewer, larger groups; shorter waits for the capacity row)",
    )
    parser.add_argument("--group-max", type=int, default=64, help="most events one lane commits together")
    parser.add_argument(
        "--late-share", type=float, default=0.0,
        help="share of events that arrive late: a month-old ED visit of a person admitted earlier in the run, "
        "which makes the service decide that person's current triggers again (0: every event in order)",
    )
    reuse = parser.add_mutually_exclusive_group()
    reuse.add_argument("--keep-db", metavar="NAME", help="load into database NAME and keep it afterwards")
    reuse.add_argument("--reuse-db", metavar="NAME", help="replay against NAME, loaded by an earlier --keep-db")


def _dsn(url: str) -> str:
    return db.normalize_url(url).replace("postgresql+asyncpg", "postgresql", 1)


def _beside(base: str, name: str) -> str:
    """The URL of database ``name`` on the server ``base`` points at."""
    return make_url(db.normalize_url(base)).set(database=name).render_as_string(hide_password=False)


async def _prepare(args: argparse.Namespace, base: str, facility: str) -> tuple[str, str | None, float | None]:
    """The database to replay against: (its URL, its name when this run drops it, seconds to load it)."""
    if args.reuse_db:
        url = _beside(base, args.reuse_db)
        size = await loaded_size(_dsn(url))
        args.persons, args.encounters = size["persons"], size["encounters"]
        return url, None, None
    if args.keep_db:
        admin = await asyncpg.connect(_dsn(_beside(base, "postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{args.keep_db}"')
        finally:
            await admin.close()
        url, name = _beside(base, args.keep_db), args.keep_db
    else:
        url, name = await db.create_scratch_database(base, "wpc_bench_enroll")
    try:
        await db.migrate_url(url)
        load_s = await load_county(_dsn(url), args.persons, args.encounters, facility)
    except BaseException:
        await db.drop_database(url, name)
        raise
    return url, None if args.keep_db else name, load_s


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(EnrollmentSettings)
    rules = rules_of(settings)
    facility = next(f for f, spec in rules.site.facilities.items() if spec.participating)
    pg: EmbeddedPostgres | None = None
    base = settings.database_url
    if not base:
        if args.keep_db or args.reuse_db:
            raise SystemExit("wpc bench enroll: --keep-db / --reuse-db need WPC_DATABASE_URL (a server that stays)")
        pg = EmbeddedPostgres(settings.data_dir / "bench-pg")
        base = await asyncio.to_thread(pg.start)
    try:
        url, drop, load_s = await _prepare(args, base, facility)
        try:
            live = await replay_live(url, rules, args.persons, args.rate, args.duration, args.lanes, args.group_max,
                                     facility, args.late_share)
        finally:
            if drop is not None:
                await db.drop_database(url, drop)
    finally:
        if pg is not None:
            await asyncio.to_thread(pg.stop)
    return {"bench": "enroll", "persons": args.persons, "encounters": args.encounters,
            "load_s": None if load_s is None else round(load_s, 1), "reused_db": bool(args.reuse_db),
            "rate_per_s": args.rate, "duration_s": args.duration, "lanes": args.lanes, "group_max": args.group_max,
            **live,
            "goal_p99_lt_100ms_at_500": (
                "NOT RUN (rate below 500/s)" if args.rate < 500 else "NOT RUN (no live feed)" if not live["events"]
                else "PASS" if live["p99_ms"] < 100 else "FAIL"
            )}


def run(args: argparse.Namespace) -> int:
    report = lifecycle.run(_main(args))  # uvloop, as the service runs
    shares = machine.Shares(report["machine_cpu_busy"], report["host_steal"])
    loaded = "reused database" if report["load_s"] is None else f"loaded in {report['load_s']} s"
    print(f"wpc bench enroll: {report['persons']:,} persons, {report['encounters']:,} encounters ({loaded})")
    print(f"live feed {report['rate_per_s']:.0f} events/s for {report['duration_s']:.0f} s, {report['lanes']} lanes: "
          f"{report['decisions_per_s']} decisions/s, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, "
          f"max {report['max_ms']} ms, late events {report['late_events']}, candidates {report['candidates']}, "
          f"mean group {report['mean_group']}, "
          f"CPU per event: bench {report['bench_cpu_ms_per_event']} ms, database {report['db_cpu_ms_per_event']} ms; "
          f"{shares.describe()}; longest GC pause {report['gc_longest_pause_ms']} ms "
          f"(generation {report['gc_longest_pause_generation']}; the longest took "
          f"{report['gc_longest_pause_cpu_ms']} ms of CPU; {report['gc_collections']} collections, "
          f"{report['gc_cpu_ms_per_event']} ms of CPU per event in all)")
    print(f"goal: p99 < 100 ms at 500 events/s ........ {report['goal_p99_lt_100ms_at_500']}")
    print(json.dumps(report))
    return 0
