"""`wpc bench notify`: notifications per second and event -> delivered latency.

The whole notifier runs as in production (`NotifierService`: Kafka consumer, PostgreSQL,
planner, sender, signed webhooks) against a scratch database, the Kafka-protocol broker
(WPC_KAFKA_BOOTSTRAP_SERVERS, or an embedded Tansu) and a local webhook receiver that
checks every signature. The feed is ``--rate`` enrollment candidates per second for
``--duration`` seconds (open loop), each of which the care team must be told of at once.

Latency is from the moment a candidate is handed to the producer to the moment the
receiver has the signed webhook; it includes Kafka, the consumer group, two PostgreSQL
transactions (notice, delivery), the HTTP post and the record of its outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from notifier.channels.webhook import verify
from notifier.config import config_from_text
from notifier.service import NotifierService
from notifier.settings import NotifierSettings
from schemas.adt_event import Identifier
from schemas.enrollment import EncounterRef, EnrollmentCandidateV1, candidate_event_id
from services import db
from services.auth import Users
from services.bus import KafkaPublisher, Record
from services.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from services.httpserver import HttpServer
from services.settings import load_settings

SECRET = "bench-hmac-key"
PROGRAMS = ("TOC", "ISR", "SUD-ENS")


def bench_config(receiver: str) -> str:
    teams = "\n".join(
        f"  - {{id: team-{p.lower()}, name: {p}, programs: [{p}], endpoints: "
        f"[{{name: webhook, channel: webhook, url: \"{receiver}/hooks/{p.lower()}\", secret_env: S}}]}}"
        for p in PROGRAMS
    )
    return f"""
version: bench-1
portal_url: https://portal.example.org
bundle_window_s: 0
part2: {{facilities: [], sud_code_prefixes: [F1], without_consent: redact}}
care_teams:
{teams}
"""


def _candidate(index: int, now: dt.datetime) -> EnrollmentCandidateV1:
    cid = uuid.uuid4()
    return EnrollmentCandidateV1(
        event_id=candidate_event_id(cid), candidate_id=cid, program=PROGRAMS[index % 3],  # type: ignore[arg-type]
        person_id=uuid.uuid4(), identifiers=[Identifier(value=f"B{index}", assigning_authority="BENCH")],
        trigger=EncounterRef(encounter_id=uuid.uuid4(), facility="BENCH", visit_number=f"V{index}", kind="inpatient",
                             patient_class="I", admit_time=now),
        criteria=[], reason="bench", rule_version="bench", decided_at=now,
    )


def receiver_app(arrivals: dict[str, float]) -> FastAPI:
    app = FastAPI()

    @app.post("/hooks/{team}")
    async def hook(team: str, request: Request) -> dict[str, str]:
        body = await request.body()
        if not verify(SECRET, request.headers.get("x-wpc-signature"), body, time.time()):
            raise HTTPException(401, "bad signature")
        for notice in json.loads(body)["notices"]:
            arrivals.setdefault(notice["candidate_id"], time.perf_counter())
        return {"status": "ok"}

    return app


async def _feed(settings: NotifierSettings, rate: float, duration: float, sent: dict[str, float]) -> None:
    publisher = KafkaPublisher(settings.kafka_bootstrap_servers)
    try:
        total = int(rate * duration)
        start = time.perf_counter()
        pending: list[asyncio.Task[object]] = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            cand = _candidate(i, dt.datetime.now(dt.UTC))
            sent[str(cand.candidate_id)] = time.perf_counter()
            record = Record(settings.topic_enrollment_candidates, str(cand.person_id).encode(),
                            cand.model_dump_json().encode())
            pending.append(asyncio.create_task(publisher.publish([record])))
        await asyncio.gather(*pending)
    finally:
        await publisher.close()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    base = load_settings(NotifierSettings)
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    database = base.database_url
    bootstrap = base.kafka_bootstrap_servers
    if not database:
        pg = EmbeddedPostgres(base.data_dir / "bench-pg")
        database = await asyncio.to_thread(pg.start)
    if not bootstrap:
        broker = EmbeddedBroker()
        await asyncio.to_thread(broker.start, base.data_dir / "bench-tansu.log")
        bootstrap = broker.bootstrap_servers
    arrivals: dict[str, float] = {}
    sent: dict[str, float] = {}
    receiver_port = free_port()
    receiver = HttpServer(receiver_app(arrivals), "127.0.0.1", receiver_port)
    suffix = uuid.uuid4().hex[:8]
    try:
        url, name = await db.create_scratch_database(database, "wpc_bench_notify")
        try:
            await db.migrate_url(url)
            settings = base.model_copy(update={
                "database_url": url, "kafka_bootstrap_servers": bootstrap, "http_host": "127.0.0.1",
                "notifier_http_port": free_port(), "notifier_group_id": f"wpc-bench-notify-{suffix}",
                "topic_enrollment_candidates": f"bench.candidates.{suffix}",
                "topic_enrollment_events": f"bench.events.{suffix}", "topic_adt_events": f"bench.adt.{suffix}",
            })
            cfg = config_from_text(bench_config(f"http://127.0.0.1:{receiver_port}"))
            await receiver.start()
            async with NotifierService(settings, config=cfg, secrets={"S": SECRET}, users=Users({})) as service:
                await _until(lambda: service.consumer.running and bool(service.consumer.assigned), 30)
                started = time.perf_counter()
                await _feed(settings, args.rate, args.duration, sent)
                await _until(lambda: len(arrivals) >= len(sent), args.duration + 60)
                elapsed = max(arrivals.values()) - started
        finally:
            await receiver.stop()
            await db.drop_database(url, name)
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)
    latencies = sorted(arrivals[k] - sent[k] for k in sent if k in arrivals)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else 0.0

    return {"bench": "notify", "rate_per_s": args.rate, "duration_s": args.duration, "events": len(sent),
            "delivered": len(latencies), "notifications_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


async def _until(predicate: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the notifier did not keep up within the bench's time limit")
        await asyncio.sleep(0.05)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=200.0, help="enrollment candidates per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of feed")


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(_main(args))
    print(f"wpc bench notify: {report['events']} candidates at {report['rate_per_s']:.0f}/s for "
          f"{report['duration_s']:.0f} s -> signed webhooks to a local receiver")
    print(f"delivered {report['delivered']}, {report['notifications_per_s']} notifications/s, "
          f"event -> delivered p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, max {report['max_ms']} ms")
    print(json.dumps(report))
    return 0 if report["delivered"] == report["events"] else 1
