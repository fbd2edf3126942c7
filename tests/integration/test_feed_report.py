"""feed_quality aggregation on rows inserted directly, and its HTTP route."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.feed_report import ControlIdReuse, FacilityQuality, FindingCount, feed_quality, router
from services.db import create_engine
from wpc.tools import feed_report

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def message(
    engine: AsyncEngine,
    facility: str,
    ack: str,
    *,
    checked: bool = True,
    inspected: bool = False,
    findings: Sequence[tuple[str, str | None]] = (),
    at: datetime = T0,
    control_id: str | None = None,
) -> uuid.UUID:
    mid = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO adt_message (id, received_at, channel, sender, sending_facility, control_id,"
                " ack_code, ack, raw, conformance_checked, conformance_checked_at, content_digest)"
                " VALUES (:id, :at, 'mllp', 's', :f, :c, :ack, 'x', 'MSH|', :checked,"
                " CASE WHEN :inspected THEN now() END, :digest)"
            ),
            {"id": mid, "at": at, "f": facility, "c": control_id or mid.hex, "ack": ack, "checked": checked,
             "inspected": inspected or bool(findings), "digest": mid.bytes},
        )
        for kind, location in findings:
            await conn.execute(
                text(
                    "INSERT INTO conformance_finding (message_id, sending_facility, kind, location, detail)"
                    " VALUES (:id, :f, :k, :l, 'd')"
                ),
                {"id": mid, "f": facility, "k": kind, "l": location},
            )
    return mid


async def seed(engine: AsyncEngine) -> None:
    await message(engine, "NORTH", "AA", findings=[("table", "PID-8"), ("structure", "PV1")])
    await message(engine, "NORTH", "AA", findings=[("table", "PID-8")])
    await message(engine, "NORTH", "AA", findings=[("table", "PID-8"), ("table", "PID-8")])  # counted once
    await message(engine, "NORTH", "AE")
    await message(engine, "NORTH", "AR", checked=False)
    await message(engine, "NORTH", "AA", checked=False)
    await message(engine, "SOUTH", "AA", findings=[("unparseable", None)], at=T0 - timedelta(days=2))
    await message(engine, "SOUTH", "AA", inspected=True)  # checked, nothing found
    await message(engine, "SOUTH", "AA")  # never selected for a check


async def test_counts_per_facility(engine: AsyncEngine) -> None:
    await seed(engine)
    report = await feed_quality(engine)
    assert report == [
        FacilityQuality(
            sending_facility="NORTH",
            received=6,
            accepted=4,
            rejected=2,
            pending_check=2,
            checked=3,
            with_findings=3,
            top_findings=[FindingCount("table", "PID-8", 3), FindingCount("structure", "PV1", 1)],
        ),
        FacilityQuality(
            sending_facility="SOUTH",
            received=3,
            accepted=3,
            rejected=0,
            pending_check=0,
            checked=2,
            with_findings=1,
            top_findings=[FindingCount("unparseable", None, 1)],
        ),
    ]


async def test_since_limits_messages_and_their_findings(engine: AsyncEngine) -> None:
    await seed(engine)
    report = {q.sending_facility: q for q in await feed_quality(engine, since=T0 - timedelta(hours=1))}
    assert report["SOUTH"].received == 2
    assert report["SOUTH"].checked == 1
    assert report["SOUTH"].with_findings == 0
    assert report["SOUTH"].top_findings == []
    assert report["NORTH"].received == 6


async def test_empty_database(engine: AsyncEngine) -> None:
    assert await feed_quality(engine) == []


async def test_http_route(engine: AsyncEngine) -> None:
    await seed(engine)
    app = FastAPI()
    app.include_router(router(lambda: engine))
    direct = FastAPI()
    direct.include_router(router(engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        everything = (await client.get("/v1/feed-quality")).json()
        recent = await client.get("/v1/feed-quality", params={"since": (T0 - timedelta(hours=1)).isoformat()})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=direct), base_url="http://t") as client:
        assert (await client.get("/v1/feed-quality")).json() == everything
    assert [q["sending_facility"] for q in everything] == ["NORTH", "SOUTH"]
    assert everything[0]["top_findings"][0] == {"kind": "table", "location": "PID-8", "messages": 3}
    assert recent.status_code == 200
    assert recent.json()[1]["received"] == 2


async def test_http_route_with_ops_token(engine: AsyncEngine) -> None:
    import hashlib

    from adt_listener.senders import Sender, Senders

    senders = Senders(senders=(Sender(name="a"),), ops_token_sha256=hashlib.sha256(b"s3cret").hexdigest())
    app = FastAPI()
    app.include_router(router(engine, senders))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/v1/feed-quality")).status_code == 401
        wrong = await client.get("/v1/feed-quality", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/v1/feed-quality", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == []


def test_feed_report_command(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    feed_report.add_arguments(parser)
    assert feed_report.run(parser.parse_args(["--database-url", database_url])) == 0
    assert "(no messages)" in capsys.readouterr().out


def test_format_table() -> None:
    table = feed_report.format_table(
        [FacilityQuality("NORTH", 6, 4, 2, 2, 5, 3, [FindingCount("table", "PID-8", 3)])]
    )
    lines = table.splitlines()
    assert lines[2].split() == ["NORTH", "6", "4", "2", "2", "5", "3"]
    assert lines[3].split() == ["3", "x", "table", "at", "PID-8"]


async def test_control_ids_reused_for_different_messages_are_a_finding_of_their_facility(
    engine: AsyncEngine,
) -> None:
    hour = timedelta(hours=1)
    for n in range(3):  # one control id, three different accepted messages
        await message(engine, "NORTH", "AA", control_id="MSG00001", at=T0 + n * hour)
    await message(engine, "NORTH", "AE", control_id="MSG00001", at=T0 + 5 * hour)  # rejected: not a reuse
    await message(engine, "NORTH", "AA", control_id="123456", at=T0 - 24 * hour)
    await message(engine, "NORTH", "AA", control_id="123456", at=T0 + 4 * hour)
    await message(engine, "NORTH", "AA", control_id="ONCE", at=T0)
    await message(engine, "SOUTH", "AA", control_id="MSG00001", at=T0)  # the same id elsewhere is no reuse

    report = {q.sending_facility: q for q in await feed_quality(engine)}
    assert report["NORTH"].control_id_reuse == ControlIdReuse(
        control_ids=2, messages=3, first_seen=T0 + hour, last_seen=T0 + 4 * hour
    )
    assert report["SOUTH"].control_id_reuse is None

    # A window counts the later messages received in it, whenever the first use was.
    window = {q.sending_facility: q for q in await feed_quality(engine, since=T0 + timedelta(minutes=90))}
    assert window["NORTH"].control_id_reuse == ControlIdReuse(2, 2, T0 + 2 * hour, T0 + 4 * hour)

    app = FastAPI()
    app.include_router(router(engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        body = (await client.get("/v1/feed-quality")).json()
    north = next(q for q in body if q["sending_facility"] == "NORTH")
    assert north["control_id_reuse"]["messages"] == 3 and north["control_id_reuse"]["control_ids"] == 2
    assert datetime.fromisoformat(north["control_id_reuse"]["first_seen"]) == T0 + hour
    assert "MSG00001" not in str(body)  # counts and times, not the ids

    table = feed_report.format_table(list(report.values()))
    assert "3 x new message under a control id already used (2 control ids;" in table
