"""The listener's ops API against the real PostgreSQL: messages taken through the real
ingest path (intake, senders, group-commit store), then the feeds overview, the message
browser, one message, and re-processing a rejected one after its sender's setting is fixed."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adt_listener.ingest import Ingestor
from adt_listener.intake import IntakePolicy
from adt_listener.ops_api import ops_router
from adt_listener.senders import load_senders
from adt_listener.store import MessageStore, Topics
from services.auth import User, Users
from services.db import create_engine
from tests.adt_builder import adt

POLICY = IntakePolicy()
OPS, CARE = "ops-token", "care-token"
SENDERS = """
senders:
  - name: north
    facilities: [NORTH]
    validation: "off"
"""
FIXED = SENDERS.replace("[NORTH]", "[NORTH, SOUTH]")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[MessageStore]:
    s = MessageStore(engine, Topics("adt.events.t", "adt.deadletter.t"), writers=1)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
def senders_file(tmp_path: Path) -> Path:
    path = tmp_path / "senders.yaml"
    path.write_text(SENDERS)
    return path


@pytest.fixture
async def api(engine: AsyncEngine, senders_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(ops_router(lambda: engine, policy=POLICY, senders_file=senders_file, service="listener",
                                  deadletter_topic="adt.deadletter.t"))
    app.state.users = Users({
        hashlib.sha256(OPS.encode()).hexdigest(): User("olga", frozenset({"ops"})),
        hashlib.sha256(CARE.encode()).hexdigest(): User("toc", frozenset({"care_team:TOC"})),
    })
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://listener",
                                 headers={"Authorization": f"Bearer {OPS}"}) as client:
        yield client


def fix(senders_file: Path) -> None:
    """What ops do: the facility SOUTH added to its sender."""
    senders_file.write_text(FIXED)


async def send(store: MessageStore, senders_file: Path, raw: bytes) -> str:
    """Take one message through the real ingest path; its ACK code."""
    reply = await Ingestor(store, POLICY, load_senders(senders_file)).receive(raw, channel="mllp", sender=None)
    assert reply.stored
    return reply.ack_code


async def ids(api: httpx.AsyncClient, **query: Any) -> list[str]:
    r = await api.get("/v1/messages", params=query)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["messages"]]


async def test_feeds_search_and_one_message(
    api: httpx.AsyncClient, store: MessageStore, senders_file: Path, engine: AsyncEngine
) -> None:
    now = dt.datetime.now(dt.UTC)
    good = adt("A01", facility="NORTH", at=now, control_id="N1")
    assert await send(store, senders_file, good) == "AA"
    assert await send(store, senders_file, good) == "AA"  # a retransmission
    assert await send(store, senders_file, adt("A01", facility="NORTH", at=now, visit=None)) == "AE"  # no PV1
    assert await send(store, senders_file, adt("A03", facility="SOUTH", at=now, control_id="S1")) == "AR"

    r = await api.get("/v1/feeds", params={"tz": "America/Los_Angeles"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "America/Los_Angeles"
    by = {f["sending_facility"]: f for f in body["facilities"]}
    assert by["NORTH"]["today"] == {"AA": 1, "AE": 1, "AR": 0, "duplicates": 1, "reprocessed": 0,
                                         "reprocessed_accepted": 0}
    assert by["SOUTH"]["today"]["AR"] == 1
    # No relay runs here: the accepted message's event and the two dead letters wait.
    assert by["NORTH"]["backlog"] == {"events": 1, "dead_letters": 1}
    assert body["relay_backlog"] == {"events": 1, "dead_letters": 2}
    assert by["NORTH"]["findings"]["received"] == 2 and by["NORTH"]["last_message_at"] is not None

    everything = await ids(api)
    assert len(everything) == 3  # the retransmission is no message of its own
    # Keyset pages of one: every message once, newest first.
    pages: list[str] = []
    before = None
    while True:
        r = await api.get("/v1/messages", params={"limit": 1} | ({"before": before} if before else {}))
        page = r.json()
        pages += [m["id"] for m in page["messages"]]
        before = page["next"]
        if before is None:
            break
    assert pages == everything
    (south,) = await ids(api, ack="AR")
    assert await ids(api, facility="SOUTH") == [south]
    assert await ids(api, event="A03") == [south]
    (north_good,) = await ids(api, control_id="N1")
    assert await ids(api, since=(now + dt.timedelta(hours=1)).isoformat()) == []
    assert (await api.get("/v1/messages", params={"since": "2026-12-02T08:00:00"})).status_code == 400
    assert (await api.get("/v1/messages", params={"ack": "XX"})).status_code == 422

    r = await api.get(f"/v1/messages/{north_good}")
    assert r.status_code == 200, r.text
    one = r.json()
    pid = next(s for s in one["segments"] if s["name"] == "PID")
    assert {"n": 3, "name": "Patient identifier list", "datatype": "CX"}.items() <= pid["fields"][1].items()
    assert one["ack"]["sent"] and [s["name"] for s in one["ack"]["segments"]] == ["MSH", "MSA"]
    assert one["event_status"] == "queued" and one["event"]["event_id"] == one["event_id"]
    assert one["duplicates"] == 1 and len(one["duplicate_rows"]) == 1 and not one["reprocessable"]
    async with engine.connect() as conn:
        trail = (await conn.execute(text("SELECT actor, action, detail FROM audit"))).all()
    assert [tuple(t) for t in trail] == [("olga", "message.read", f"message {north_good}")]

    rejected = (await api.get(f"/v1/messages/{south}")).json()
    assert rejected["findings"][0]["location"] == "MSH-4" and rejected["event"] is None
    assert rejected["reprocessable"]
    assert (await api.get(f"/v1/messages/{uuid.uuid4()}")).status_code == 404


async def test_ops_only(api: httpx.AsyncClient) -> None:
    for path in ("/v1/feeds", "/v1/messages", f"/v1/messages/{uuid.uuid4()}"):
        assert (await api.get(path, headers={"Authorization": f"Bearer {CARE}"})).status_code == 403
        assert (await api.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
    r = await api.post(f"/v1/messages/{uuid.uuid4()}/reprocess", headers={"Authorization": f"Bearer {CARE}"})
    assert r.status_code == 403
    assert (await api.get("/v1/feeds", params={"tz": "Mars/Olympus"})).status_code == 400


async def test_reprocess_after_the_senders_file_is_fixed(
    api: httpx.AsyncClient, store: MessageStore, senders_file: Path, engine: AsyncEngine
) -> None:
    now = dt.datetime.now(dt.UTC)
    assert await send(store, senders_file, adt("A01", facility="SOUTH", at=now, control_id="S1")) == "AR"
    assert await send(store, senders_file, adt("A01", facility="NORTH", at=now, control_id="N1")) == "AA"
    (south,) = await ids(api, ack="AR")
    (north,) = await ids(api, ack="AA")

    # Not fixed yet: rejected again, recorded, nothing accepted.
    r = await api.post(f"/v1/messages/{south}/reprocess")
    assert r.status_code == 200, r.text
    assert r.json()["ack_code"] == "AR" and r.json()["accepted_id"] is None

    fix(senders_file)
    r = await api.post(f"/v1/messages/{south}/reprocess")
    assert r.status_code == 200, r.text
    accepted = r.json()["accepted_id"]
    assert r.json()["ack_code"] == "AA" and accepted and r.json()["sender"] == "north"

    again = await api.post(f"/v1/messages/{south}/reprocess")
    assert again.status_code == 409 and accepted in again.json()["detail"]
    assert (await api.post(f"/v1/messages/{accepted}/reprocess")).status_code == 409
    assert (await api.post(f"/v1/messages/{north}/reprocess")).status_code == 409
    assert (await api.post(f"/v1/messages/{uuid.uuid4()}/reprocess")).status_code == 404

    shown = (await api.get(f"/v1/messages/{accepted}")).json()
    assert shown["channel"] == "reprocess" and shown["reprocess_of"] == south and not shown["ack"]["sent"]
    assert shown["event_status"] == "queued" and shown["event"]["sending_facility"] == "SOUTH"
    original = (await api.get(f"/v1/messages/{south}")).json()
    assert original["ack_code"] == "AR" and original["accepted_as"] == accepted and not original["reprocessable"]
    assert [run["ack_code"] for run in original["reprocess_runs"]] == ["AR", "AA"]
    feeds = {f["sending_facility"]: f for f in (await api.get("/v1/feeds")).json()["facilities"]}
    assert feeds["SOUTH"]["today"] == {"AA": 0, "AE": 0, "AR": 1, "duplicates": 0, "reprocessed": 2,
                                            "reprocessed_accepted": 1}
    async with engine.connect() as conn:
        queued = (await conn.execute(text("SELECT message_id FROM adt_event_queue ORDER BY id"))).scalars().all()
        actions = (await conn.execute(text("SELECT action FROM audit WHERE action = 'message.reprocess'"))).all()
    assert [str(q) for q in queued] == [north, accepted]  # one event for the re-run, exactly once
    assert len(actions) == 2  # the two re-runs that ran; refusals are no acts


async def test_reprocess_twice_at_once_accepts_once(
    api: httpx.AsyncClient, store: MessageStore, senders_file: Path
) -> None:
    assert await send(store, senders_file, adt("A01", facility="SOUTH", at=dt.datetime.now(dt.UTC))) == "AR"
    (south,) = await ids(api)
    fix(senders_file)
    answers = await asyncio.gather(*(api.post(f"/v1/messages/{south}/reprocess") for _ in range(3)))
    assert sorted(a.status_code for a in answers) == [200, 409, 409]


async def test_a_message_the_sender_resent_is_not_accepted_twice(
    api: httpx.AsyncClient, store: MessageStore, senders_file: Path
) -> None:
    raw = adt("A01", facility="SOUTH", at=dt.datetime.now(dt.UTC), control_id="S9")
    assert await send(store, senders_file, raw) == "AR"
    (south,) = await ids(api)
    fix(senders_file)
    assert await send(store, senders_file, raw) == "AA"  # the hospital resent it after the fix
    resent = (await ids(api, ack="AA"))[0]
    r = await api.post(f"/v1/messages/{south}/reprocess")
    assert r.status_code == 409 and resent in r.json()["detail"]
