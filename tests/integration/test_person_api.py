"""The person card, outreach attempts and two people acting at once (enrollment_svc.api, issue 13),
over ASGI against the real PostgreSQL; events go through the store as the consumer applies them."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.api import enrollment_router
from enrollment_svc.model import Flag
from enrollment_svc.store import EnrollmentStore, identity_key
from services.auth import User, Users
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.integration.test_enrollment_api import sud_ens_candidate, toc_candidate
from tests.integration.test_enrollment_store import NOW, apply, rules

TOKENS = {
    "tok-toc": User("maria.lopez", frozenset({"care_team:TOC"})),
    "tok-toc2": User("tom.tran", frozenset({"care_team:TOC"})),
    "tok-sud": User("sam.sud", frozenset({"care_team:SUD-ENS"})),
    "tok-isr": User("ivan.ortiz", frozenset({"care_team:ISR"})),
    "tok-ops": User("olga.ops", frozenset({"ops"})),
}
TOC, TOC2, SUD, ISR, OPS = ({"Authorization": f"Bearer {t}"} for t in TOKENS)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


@pytest.fixture
def store() -> EnrollmentStore:
    base = rules()
    programs = {**base.programs, "SUD-ENS": base.programs["SUD-ENS"].model_copy(update={"part2": True})}
    return EnrollmentStore(base.model_copy(update={"programs": programs}))


@pytest.fixture
async def client(engine: AsyncEngine, store: EnrollmentStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.users = Users({hashlib.sha256(t.encode()).hexdigest(): u for t, u in TOKENS.items()})
    app.include_router(enrollment_router(engine, store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def audit_actions(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT actor, action, candidate_id, detail FROM audit ORDER BY id"))
        return [tuple(r) for r in rows]


# --- the person card -----------------------------------------------------------------------


async def test_person_card_says_who_and_where_now_from_the_newest_event(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    later = NOW + dt.timedelta(hours=2)
    moved = adt("A02", mrn="P-1", visit="P-1-V3", at=later, admit=NOW, medi_cal_id="91000001A",
                phone="(213)555-0101", point_of_care="5E", room="512")
    await apply(engine, store, event(moved), later)
    # A late event of last month: its phone and ward are older than what is known, and change nothing.
    old = NOW - dt.timedelta(days=30)
    stale = adt("A01", mrn="P-1", visit="P-1-OLD", at=old, admit=old, medi_cal_id="91000001A",
                phone="(310)555-9999", point_of_care="ICU", street="9 OLD RD")
    await apply(engine, store, event(stale), later)

    r = await client.get(f"/v1/persons/{made.person_id}", headers=TOC)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == {"family": "DOE", "given": "ALEX"}
    assert body["birth_date"] == "1980-01-01"
    assert body["phone"] == "(213)555-0101"
    assert body["address"]["street"] == "1 MAIN ST" and body["address"]["zip"] == "90012"
    assert body["housing"]["no_fixed_address"] is False
    where = body["where"]
    assert (where["facility"]["id"], where["unit"], where["room"], where["bed"]) == ("COUNTYGEN", "5E", "512", "A")
    assert where["trigger"] == "A02" and where["discharged"] is False
    assert {(i["authority"], i["value"]) for i in body["identities"]} >= {("COUNTYGEN", "P-1")}
    assert len(body["encounters"]) == 4  # three stays and the late one, across the hospital's visits
    assert body["candidates"][0]["id"] == str(made.candidate_id)
    assert body["timezone"] == "America/Los_Angeles"
    assert body["viewer"] == {"part2_qualified": False}
    assert ("maria.lopez", "read_person", None, "") in await audit_actions(engine)


async def test_no_fixed_address_from_the_street_and_the_z59_evidence(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    raw = adt("A01", mrn="H-1", visit="H-1-V1", at=NOW, admit=NOW, medi_cal_id=None, street="HOMELESS",
              dx=("Z59.00",))
    applied = await apply(engine, store, event(raw), NOW)
    r = await client.get(f"/v1/persons/{applied.person_id}", headers=OPS)
    assert r.status_code == 200, r.text
    housing = r.json()["housing"]
    assert housing["no_fixed_address"] is True and housing["address_says_homeless"] is True
    [evidence] = housing["homelessness_diagnoses"]
    assert evidence["codes"] == ["Z5900"] and evidence["facility"]["id"] == "COUNTYGEN"
    [encounter] = r.json()["encounters"]
    assert encounter["dx_sets"] == {"homelessness": ["Z5900"]}
    # A partner system's flag counts too.
    flag = Flag(id=str(uuid.uuid4()), kind="homelessness", source="hmis", effective=NOW - dt.timedelta(days=3))
    async with engine.begin() as conn:
        await store.add_flag(conn, identity_key("COUNTYGEN", "H-1"), flag, recorded_by="hmis", now=NOW)
    r = await client.get(f"/v1/persons/{applied.person_id}", headers=OPS)
    assert [f["source"] for f in r.json()["housing"]["homelessness_flags"]] == ["hmis"]


async def test_person_page_access_follows_the_programs(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await sud_ens_candidate(engine, store, "S-1", "93000001A")
    assert (await client.get(f"/v1/persons/{made.person_id}", headers=TOC)).status_code == 403
    assert (await client.get(f"/v1/persons/{made.person_id}", headers=ISR)).status_code == 403
    r = await client.get(f"/v1/persons/{made.person_id}", headers=SUD)
    assert r.status_code == 200 and r.json()["viewer"] == {"part2_qualified": True}
    r = await client.get(f"/v1/persons/{made.person_id}", headers=OPS)
    assert r.status_code == 200 and r.json()["viewer"] == {"part2_qualified": False}
    assert (await client.get(f"/v1/persons/{uuid.uuid4()}", headers=OPS)).status_code == 404


# --- outreach attempts ---------------------------------------------------------------------


async def test_outreach_attempts_are_recorded_listed_and_audited(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-2", "91000002A")
    cid = made.candidate_id
    first = {"at": "2026-11-20T13:05:00-08:00", "channel": "phone", "outcome": "no_answer"}
    second = {"at": "2026-11-20T15:30:00-08:00", "channel": "in_person", "outcome": "reached", "note": "at bedside"}
    for body in (first, second):
        r = await client.post(f"/v1/candidates/{cid}/outreach", headers=TOC, json=body)
        assert r.status_code == 201, r.text
    r = await client.get(f"/v1/candidates/{cid}", headers=TOC)
    log = r.json()["outreach"]
    assert [(a["channel"], a["outcome"], a["note"], a["actor"]) for a in log] == [
        ("in_person", "reached", "at bedside", "maria.lopez"),
        ("phone", "no_answer", None, "maria.lopez"),
    ]
    assert r.json()["services"] == []
    assert [a for a in await audit_actions(engine) if a[1] == "record_outreach"] == [
        ("maria.lopez", "record_outreach", cid, "phone:no_answer"),
        ("maria.lopez", "record_outreach", cid, "in_person:reached"),
    ]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"at": "2026-11-20T13:05:00-08:00", "channel": "fax", "outcome": "reached"}, 422),
        ({"at": "2026-11-20T13:05:00-08:00", "channel": "phone", "outcome": "maybe"}, 422),
        ({"at": "2026-11-20T13:05:00", "channel": "phone", "outcome": "reached"}, 422),  # no offset
        ({"at": "2999-01-01T00:00:00Z", "channel": "phone", "outcome": "reached"}, 422),  # the future
        ({"at": "2026-11-20T13:05:00Z", "channel": "phone", "outcome": "reached", "note": "x" * 501}, 422),
        ({"channel": "phone", "outcome": "reached"}, 422),
    ],
)
async def test_outreach_bad_input_gets_a_reason_and_records_nothing(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    made = await toc_candidate(engine, store, "P-3", "91000003A")
    r = await client.post(f"/v1/candidates/{made.candidate_id}/outreach", headers=TOC, json=body)
    assert r.status_code == status and r.json()["detail"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM outreach_attempt")) == 0


async def test_outreach_needs_the_programs_team_and_an_open_candidate(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-4", "91000004A")
    url = f"/v1/candidates/{made.candidate_id}/outreach"
    body = {"at": "2026-11-20T13:05:00-08:00", "channel": "letter", "outcome": "refused"}
    assert (await client.post(url, headers=ISR, json=body)).status_code == 403
    assert (await client.post(url, headers=OPS, json=body)).status_code == 403  # ops reads, does not act
    r = await client.post(f"/v1/candidates/{made.candidate_id}/decline", headers=TOC, json={"reason": "refused"})
    assert r.status_code == 200
    r = await client.post(url, headers=TOC, json=body)
    assert r.status_code == 409 and "this one is declined" in r.json()["detail"]


# --- two people acting at once -------------------------------------------------------------


async def test_the_second_of_two_accepting_at_once_is_told_who_and_when(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-5", "91000005A")
    url = f"/v1/candidates/{made.candidate_id}/accept"
    replies = await asyncio.gather(client.post(url, headers=TOC), client.post(url, headers=TOC2))
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 409], [r.text for r in replies]
    winner = "maria.lopez" if replies[0].status_code == 200 else "tom.tran"
    [loser] = [r for r in replies if r.status_code == 409]
    detail = loser.json()["detail"]
    assert detail.startswith(f"cannot accept: already accepted by {winner} at 20")
    assert detail.endswith(("PST", "PDT"))  # the site's time zone
    async with engine.connect() as conn:
        accepted = await conn.scalar(
            text("SELECT count(*) FROM candidate_transition WHERE candidate_id = :c AND to_status = 'accepted'"),
            {"c": made.candidate_id},
        )
    assert accepted == 1
