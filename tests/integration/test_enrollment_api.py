"""The care team's API (enrollment_svc.api) over ASGI, against the real PostgreSQL.

Candidates are made through the store from hand-made ADT events (tests/adt_builder.py),
as in test_enrollment_store.py; every request then goes through FastAPI with a bearer
token, and the tests look at status codes, bodies and the database rows left behind
(candidates, transitions, flags, identities, the audit trail).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from enrollment_svc.api import enrollment_router
from enrollment_svc.model import Flag
from enrollment_svc.status import DECLINE_REASONS
from enrollment_svc.store import Applied, EnrollmentStore, identity_key
from services.auth import User, Users
from services.db import create_engine
from tests.adt_builder import adt, event
from tests.integration.test_enrollment_store import NOW, apply, rules

PACIFIC = ZoneInfo("America/Los_Angeles")

# token -> user; the app only knows the SHA-256 digests.
TOKENS = {
    "tok-toc": User("maria.lopez", frozenset({"care_team:TOC", "care_team:SUD-ENS"})),
    "tok-isr": User("ivan.ortiz", frozenset({"care_team:ISR"})),
    "tok-partner": User("probation-feed", frozenset({"partner"})),
    "tok-ops": User("olga.ops", frozenset({"ops"})),
}
TOC = {"Authorization": "Bearer tok-toc"}
ISR = {"Authorization": "Bearer tok-isr"}
PARTNER = {"Authorization": "Bearer tok-partner"}
OPS = {"Authorization": "Bearer tok-ops"}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    yield eng
    await eng.dispose()


@pytest.fixture
def store() -> EnrollmentStore:
    return EnrollmentStore(rules())


@pytest.fixture
async def client(engine: AsyncEngine, store: EnrollmentStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.users = Users({hashlib.sha256(t.encode()).hexdigest(): u for t, u in TOKENS.items()})
    app.include_router(enrollment_router(engine, store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


# --- making candidates through the store ---------------------------------------------------


async def toc_candidate(
    engine: AsyncEngine,
    store: EnrollmentStore,
    mrn: str,
    medi_cal_id: str | None,
    *,
    facility: str = "COUNTYGEN",
    admit: dt.datetime = NOW,
    discharge: dt.datetime | None = None,
) -> Applied:
    """A TOC candidate: two earlier stays, then a third admission with an SUD diagnosis (and its discharge)."""
    for n, days in ((1, 100), (2, 50)):
        start = admit - dt.timedelta(days=days)
        out = start + dt.timedelta(days=1)
        for trigger, at, end in (("A01", start, None), ("A03", out, out)):
            raw = adt(trigger, facility=facility, mrn=mrn, visit=f"{mrn}-V{n}", at=at, admit=start, discharge=end,
                      medi_cal_id=medi_cal_id)
            await apply(engine, store, event(raw), admit)
    raw = adt("A01", facility=facility, mrn=mrn, visit=f"{mrn}-V3", at=admit, admit=admit, dx=("F10.20",),
              medi_cal_id=medi_cal_id)
    made = await apply(engine, store, event(raw), admit)
    assert made.candidate_id is not None and made.candidate_status == "pending", made.evaluation
    if discharge is not None:
        raw = adt("A03", facility=facility, mrn=mrn, visit=f"{mrn}-V3", at=discharge, admit=admit,
                  discharge=discharge, dx=("F10.20",), medi_cal_id=medi_cal_id)
        await apply(engine, store, event(raw), discharge)
    return made


async def ed_visit(engine: AsyncEngine, store: EnrollmentStore, mrn: str, medi_cal_id: str, at: dt.datetime) -> None:
    """An ED visit of a youth with opioid use disorder: SUD-ENS needs one more fact (a partner's flag)."""
    raw = adt("A04", mrn=mrn, visit=f"{mrn}-E1", patient_class="E", at=at, admit=at, dx=("F11.20",),
              birth="20100101", medi_cal_id=medi_cal_id)
    await apply(engine, store, event(raw), at)


async def sud_ens_candidate(engine: AsyncEngine, store: EnrollmentStore, mrn: str, medi_cal_id: str) -> Applied:
    await ed_visit(engine, store, mrn, medi_cal_id, NOW - dt.timedelta(hours=3))
    flag = Flag(id=str(uuid.uuid4()), kind="drug_court_referral", source="probation",
                effective=NOW - dt.timedelta(days=2))
    async with engine.begin() as conn:
        made = await store.add_flag(conn, identity_key("COUNTYGEN", mrn), flag, recorded_by="probation-feed", now=NOW)
    assert made.candidate_id is not None and made.candidate_status == "pending", made.evaluation
    return made


# --- reading the database ------------------------------------------------------------------


async def audit_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (await conn.execute(text("SELECT actor, action, person_id, candidate_id, detail FROM audit ORDER BY id")))
            .all()
        )


async def scalar(engine: AsyncEngine, sql: str, **params: object) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


# --- authentication and roles --------------------------------------------------------------


async def test_requests_without_a_valid_token_get_401(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic tok-toc"},
                    {"Authorization": "Bearer"}, {"Authorization": "tok-toc"}):
        for method, url in (("GET", "/v1/candidates"), ("GET", f"/v1/candidates/{made.candidate_id}"),
                            ("POST", f"/v1/candidates/{made.candidate_id}/accept")):
            r = await client.request(method, url, headers=headers)
            assert r.status_code == 401, (headers, url, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["detail"] == "a valid bearer token is required"
    assert await scalar(engine, "SELECT status FROM candidate WHERE id = :c", c=made.candidate_id) == "pending"
    assert await audit_rows(engine) == []


async def test_a_care_team_sees_and_acts_only_on_its_programs(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    cid = made.candidate_id

    r = await client.get(f"/v1/candidates/{cid}", headers=ISR)
    assert r.status_code == 403 and "program" in r.json()["detail"]
    for action, body in (("accept", None), ("consent", None), ("decline", {"reason": "refused"})):
        r = await client.post(f"/v1/candidates/{cid}/{action}", headers=ISR, json=body)
        assert r.status_code == 403, (action, r.text)
    r = await client.post(f"/v1/candidates/{cid}/services", headers=ISR,
                          json={"kind": "home_visit", "at": NOW.isoformat()})
    assert r.status_code == 403
    r = await client.get("/v1/candidates", params={"program": "TOC"}, headers=ISR)
    assert r.status_code == 403 and r.json()["detail"] == "no role for this program"
    # Without a program filter the ISR team lists its own programs only: not this TOC candidate.
    r = await client.get("/v1/candidates", headers=ISR)
    assert r.status_code == 200 and r.json() == []
    r = await client.get(f"/v1/persons/{made.person_id}/timeline", headers=ISR)
    assert r.status_code == 403
    # A partner system reads no candidates; ops reads every program but acts on none.
    assert (await client.get(f"/v1/candidates/{cid}", headers=PARTNER)).status_code == 403
    assert (await client.get(f"/v1/candidates/{cid}", headers=OPS)).status_code == 200
    assert (await client.post(f"/v1/candidates/{cid}/accept", headers=OPS)).status_code == 403
    r = await client.get("/v1/candidates/" + str(uuid.uuid4()), headers=TOC)
    assert r.status_code == 404

    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT status, status_reason FROM candidate WHERE id = :c"), {"c": cid})).one()
        assert tuple(row) == ("pending", None)
        assert await conn.scalar(text("SELECT count(*) FROM service_record")) == 0
        assert await conn.scalar(
            text("SELECT count(*) FROM candidate_transition WHERE candidate_id = :c"), {"c": cid}
        ) == 2
    # Refused requests leave no audit row; ops' one read does.
    assert [(a.actor, a.action, a.candidate_id) for a in await audit_rows(engine)] == [
        ("olga.ops", "read_candidate", cid)
    ]


# --- listing and reading -------------------------------------------------------------------


async def test_list_filters_by_program_status_and_facility(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    county = await toc_candidate(engine, store, "P-1", "91000001A", facility="COUNTYGEN")
    stmary = await toc_candidate(engine, store, "S-2", "91000002A", facility="STMARY")
    sud = await sud_ens_candidate(engine, store, "P-3", "91000003A")
    r = await client.post(f"/v1/candidates/{stmary.candidate_id}/accept", headers=TOC)
    assert r.status_code == 200

    async def ids(**params: str) -> set[str]:
        r = await client.get("/v1/candidates", params=params, headers=TOC)
        assert r.status_code == 200, r.text
        return {c["id"] for c in r.json()}

    assert await ids() == {str(county.candidate_id), str(stmary.candidate_id), str(sud.candidate_id)}
    assert await ids(program="TOC") == {str(county.candidate_id), str(stmary.candidate_id)}
    assert await ids(program="SUD-ENS") == {str(sud.candidate_id)}
    assert await ids(facility="STMARY") == {str(stmary.candidate_id)}
    assert await ids(program="TOC", facility="COUNTYGEN") == {str(county.candidate_id)}
    assert await ids(status="accepted") == {str(stmary.candidate_id)}
    assert await ids(status="pending") == {str(county.candidate_id), str(sud.candidate_id)}
    assert await ids(status="enrolled") == set()
    assert await ids(program="SUD-ENS", facility="STMARY") == set()

    r = await client.get("/v1/candidates", params={"program": "TOC", "limit": 1}, headers=TOC)
    assert r.status_code == 200 and len(r.json()) == 1
    assert (await client.get("/v1/candidates", params={"limit": 0}, headers=TOC)).status_code == 422

    r = await client.get("/v1/candidates", params={"facility": "STMARY"}, headers=TOC)
    (body,) = r.json()
    assert body["program"] == "TOC" and body["status"] == "accepted" and body["facility"] == "STMARY"
    assert body["person_id"] == str(stmary.person_id) and body["rule_version"].startswith("test-1")

    # One audit row per candidate listed, naming the person and the candidate.
    listed = [a for a in await audit_rows(engine) if a.action == "list_candidate"]
    assert all(a.actor == "maria.lopez" and a.detail == "" for a in listed)
    assert (stmary.person_id, stmary.candidate_id) in {(a.person_id, a.candidate_id) for a in listed}
    # Lists so far: 3 + 2 + 1 + 1 + 1 + 1 + 2 + 0 + 0 + 1 (limit) + 1 = 13 rows; the 422 wrote none.
    assert len(listed) == 13


async def test_read_one_candidate_with_identifiers_and_transitions(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    r = await client.get(f"/v1/candidates/{made.candidate_id}", headers=TOC)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == str(made.candidate_id) and body["person_id"] == str(made.person_id)
    assert body["program"] == "TOC" and body["status"] == "pending" and body["facility"] == "COUNTYGEN"
    assert body["encounter_id"] == str(made.encounter_id)
    assert body["decision"]["reason"].startswith("TOC")
    assert {(i["authority"], i["value"]) for i in body["identifiers"]} == {("COUNTYGEN", "P-1")}
    assert [(t["from_status"], t["to_status"], t["actor"]) for t in body["transitions"]] == [
        (None, "queued", "system"), ("queued", "pending", "system")
    ]
    assert dt.datetime.fromisoformat(body["expires_at"]) == NOW + dt.timedelta(days=14)

    rows = await audit_rows(engine)
    assert [(a.actor, a.action, a.person_id, a.candidate_id, a.detail) for a in rows] == [
        ("maria.lopez", "read_candidate", made.person_id, made.candidate_id, "")
    ]

    r = await client.get(f"/v1/persons/{made.person_id}/timeline", headers=TOC)
    assert r.status_code == 200
    timeline = r.json()
    assert len(timeline["encounters"]) == 3 and [c["id"] for c in timeline["candidates"]] == [str(made.candidate_id)]
    last = (await audit_rows(engine))[-1]
    assert (last.actor, last.action, last.person_id, last.candidate_id) == (
        "maria.lopez", "read_timeline", made.person_id, None
    )


# --- actions -------------------------------------------------------------------------------


async def test_accept_consent_enroll_then_disenroll(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    cid = made.candidate_id
    r = await client.post(f"/v1/candidates/{cid}/accept", headers=TOC)
    assert r.status_code == 200 and r.json() == {"id": str(cid), "status": "accepted"}
    r = await client.post(f"/v1/candidates/{cid}/consent", headers=TOC)
    assert r.status_code == 200 and r.json()["status"] == "enrolled"
    assert await scalar(engine, "SELECT status FROM candidate WHERE id = :c", c=cid) == "enrolled"

    # Consent twice: nothing to do from enrolled.
    r = await client.post(f"/v1/candidates/{cid}/consent", headers=TOC)
    assert r.status_code == 409 and r.json()["detail"].startswith("cannot consent: already enrolled by maria.lopez at ")

    # The enrollment counts in the measures of the month (Pacific) it happened in.
    enrolled_at: dt.datetime = await scalar(
        engine, "SELECT at FROM candidate_transition WHERE candidate_id = :c AND to_status = 'enrolled'", c=cid
    )
    month = enrolled_at.astimezone(PACIFIC).strftime("%Y-%m")
    r = await client.get("/v1/measures", params={"month": month}, headers=OPS)
    assert r.status_code == 200 and r.json()["programs"]["TOC"]["enrolled"] == 1

    r = await client.post(f"/v1/candidates/{cid}/disenroll", headers=TOC, json={"reason": "moved to Mars"})
    assert r.status_code == 409 and "handoff_complete" in r.json()["detail"]
    r = await client.post(f"/v1/candidates/{cid}/disenroll", headers=TOC, json={"reason": "handoff_complete"})
    assert r.status_code == 200 and r.json()["status"] == "disenrolled"

    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT status, status_reason FROM candidate WHERE id = :c"), {"c": cid})).one()
        assert tuple(row) == ("disenrolled", "handoff_complete")
        transitions = (
            await conn.execute(
                text("SELECT from_status, to_status, actor, reason FROM candidate_transition "
                     "WHERE candidate_id = :c ORDER BY id"),
                {"c": cid},
            )
        ).all()
    assert [tuple(t) for t in transitions] == [
        (None, "queued", "system", None),
        ("queued", "pending", "system", None),
        ("pending", "accepted", "maria.lopez", None),
        ("accepted", "enrolled", "maria.lopez", None),
        ("enrolled", "disenrolled", "maria.lopez", "handoff_complete"),
    ]
    changes = [a for a in await audit_rows(engine) if a.action in ("accept", "consent", "disenroll")]
    assert [(a.actor, a.action, a.person_id, a.candidate_id, a.detail) for a in changes] == [
        ("maria.lopez", "accept", made.person_id, cid, ""),
        ("maria.lopez", "consent", made.person_id, cid, ""),
        ("maria.lopez", "disenroll", made.person_id, cid, "handoff_complete"),
    ]


async def test_decline_needs_a_known_reason_and_a_declined_candidate_cannot_consent(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A")
    cid = made.candidate_id
    for body in ({}, {"reason": None}, {"reason": "busy"}):
        r = await client.post(f"/v1/candidates/{cid}/decline", headers=TOC, json=body)
        assert r.status_code == 409, body
        detail = r.json()["detail"]
        assert detail.startswith("decline needs a reason among: ")
        assert set(detail.removeprefix("decline needs a reason among: ").split(", ")) == DECLINE_REASONS
    # An extra field is a malformed request, not a transition error.
    r = await client.post(f"/v1/candidates/{cid}/decline", headers=TOC, json={"reason": "refused", "note": "x"})
    assert r.status_code == 422
    assert await scalar(engine, "SELECT status FROM candidate WHERE id = :c", c=cid) == "pending"
    assert await audit_rows(engine) == []  # a refused change is rolled back with its audit row

    r = await client.post(f"/v1/candidates/{cid}/decline", headers=TOC, json={"reason": "not_reached"})
    assert r.status_code == 200 and r.json()["status"] == "declined"
    r = await client.post(f"/v1/candidates/{cid}/consent", headers=TOC)
    assert r.status_code == 409
    assert r.json()["detail"].startswith("cannot consent a candidate that is declined (declined by maria.lopez at ")
    r = await client.post(f"/v1/candidates/{cid}/accept", headers=TOC)
    assert r.status_code == 409

    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT status, status_reason FROM candidate WHERE id = :c"), {"c": cid})).one()
        assert tuple(row) == ("declined", "not_reached")
    assert [(a.actor, a.action, a.candidate_id, a.detail) for a in await audit_rows(engine)] == [
        ("maria.lopez", "decline", cid, "not_reached")
    ]


async def test_audit_rows_name_who_and_which_ids_but_hold_no_patient_values(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    made = await toc_candidate(engine, store, "P-1", "91000001A", discharge=NOW + dt.timedelta(days=1))
    cid, pid = made.candidate_id, made.person_id
    calls = [
        ("GET", "/v1/candidates", None),
        ("GET", f"/v1/candidates/{cid}", None),
        ("GET", f"/v1/persons/{pid}/timeline", None),
        ("POST", f"/v1/candidates/{cid}/accept", None),
        ("POST", f"/v1/candidates/{cid}/services", {"kind": "pre_discharge_visit", "at": NOW.isoformat()}),
        ("POST", f"/v1/candidates/{cid}/consent", None),
        ("POST", f"/v1/candidates/{cid}/disenroll", {"reason": "refused"}),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, headers=TOC, json=body)
        assert r.status_code in (200, 201), (url, r.text)

    rows = await audit_rows(engine)
    assert [(a.action, a.person_id, a.candidate_id, a.detail) for a in rows] == [
        ("list_candidate", pid, cid, ""),
        ("read_candidate", pid, cid, ""),
        ("read_timeline", pid, None, ""),
        ("accept", pid, cid, ""),
        ("record_service", pid, cid, "pre_discharge_visit"),
        ("consent", pid, cid, ""),
        ("disenroll", pid, cid, "refused"),
    ]
    assert {a.actor for a in rows} == {"maria.lopez"}
    # No identifier, Medi-Cal id, birth date, diagnosis or visit number in any audit column.
    patient_values = ("P-1", "91000001A", "1980", "F10", "F1020", "COUNTYGEN", "DOE", "ALEX", "90012")
    for a in rows:
        flat = " ".join(str(v) for v in a)
        assert not [v for v in patient_values if v in flat], flat


# --- partner flags -------------------------------------------------------------------------


async def test_partner_flag_for_a_known_identifier_makes_a_sud_ens_candidate(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    now = dt.datetime.now(dt.UTC)  # the API evaluates at the real clock: the ED visit must be current
    await ed_visit(engine, store, "Y-1", "92000001A", now - dt.timedelta(hours=3))
    body = {
        "identifier": {"authority": "COUNTYGEN", "value": "Y-1"},
        "kind": "drug_court_referral",
        "source": "probation",
        "effective": (now - dt.timedelta(days=2)).isoformat(),
        "detail": "referral 2026-114",
    }
    r = await client.post("/v1/flags", headers=PARTNER, json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["proposed"] == "SUD-ENS" and out["candidate_id"] is not None

    async with engine.connect() as conn:
        flag = (await conn.execute(text("SELECT id, person_id, kind, source, recorded_by, detail FROM patient_flag")))\
            .one()
        candidate = (
            await conn.execute(text("SELECT id, person_id, program, status FROM candidate"))
        ).one()
    assert str(flag.id) == out["flag_id"] and str(flag.person_id) == out["person_id"]
    assert (flag.kind, flag.source, flag.recorded_by, flag.detail) == (
        "drug_court_referral", "probation", "probation-feed", "referral 2026-114"
    )
    assert (str(candidate.id), str(candidate.person_id), candidate.program, candidate.status) == (
        out["candidate_id"], out["person_id"], "SUD-ENS", "pending"
    )
    (audit,) = await audit_rows(engine)
    assert (audit.actor, audit.action, str(audit.person_id), audit.detail) == (
        "probation-feed", "add_flag", out["person_id"], "drug_court_referral"
    )
    assert str(audit.candidate_id) == out["candidate_id"]  # the flag made this candidate


async def test_flag_errors_unknown_identifier_naive_time_and_missing_role(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    await ed_visit(engine, store, "Y-1", "92000001A", NOW - dt.timedelta(hours=3))
    good = {
        "identifier": {"authority": "COUNTYGEN", "value": "Y-1"},
        "kind": "homelessness",
        "source": "hmis",
        "effective": "2026-10-01T00:00:00-07:00",
    }
    r = await client.post("/v1/flags", headers=PARTNER,
                          json=good | {"identifier": {"authority": "COUNTYGEN", "value": "NOBODY"}})
    assert r.status_code == 404 and r.json()["detail"] == "no patient with this identifier"
    r = await client.post("/v1/flags", headers=PARTNER, json=good | {"effective": "2026-10-01T00:00:00"})
    assert r.status_code == 422 and "offset" in r.json()["detail"]
    r = await client.post("/v1/flags", headers=PARTNER,
                          json=good | {"until": "2026-12-01T00:00:00"})
    assert r.status_code == 422
    r = await client.post("/v1/flags", headers=PARTNER, json=good | {"kind": "rumour"})
    assert r.status_code == 422
    r = await client.post("/v1/flags", headers=OPS, json=good)
    assert r.status_code == 403 and r.json()["detail"] == "partner or care team role required"
    assert await scalar(engine, "SELECT count(*) FROM patient_flag") == 0
    assert await audit_rows(engine) == []

    # The care team may record a flag too.
    r = await client.post("/v1/flags", headers=TOC, json=good)
    assert r.status_code == 201
    assert await scalar(engine, "SELECT recorded_by FROM patient_flag") == "maria.lopez"


# --- identity links ------------------------------------------------------------------------


async def test_link_makes_one_person_and_unlink_splits_it_again_and_both_are_ops_work(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    # The same patient at two hospitals, without a Medi-Cal id to match on: two persons.
    for facility, mrn in (("COUNTYGEN", "C-1"), ("STMARY", "S-9")):
        start = NOW - dt.timedelta(days=10 if facility == "COUNTYGEN" else 5)
        await apply(engine, store, event(adt("A01", facility=facility, mrn=mrn, visit=f"{mrn}-V1", at=start,
                                             admit=start, medi_cal_id=None)))

    async def persons() -> dict[str, uuid.UUID]:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT facility, person_id FROM encounter"))).all()
        return {r.facility: r.person_id for r in rows}

    before = await persons()
    assert before["COUNTYGEN"] != before["STMARY"]

    link = {"a": {"authority": "COUNTYGEN", "value": "C-1"}, "b": {"authority": "STMARY", "value": "S-9"},
            "reason": "same name, birth date and address"}
    # Ops work only: a care team (even of every program) or a partner may not link.
    for headers in (PARTNER, TOC, ISR):
        r = await client.post("/v1/identity-links", headers=headers, json=link)
        assert r.status_code == 403 and "ops" in r.json()["detail"], r.text
    assert await persons() == before
    r = await client.post("/v1/identity-links", headers=OPS, json=link | {"b": {"authority": "STMARY", "value": "X"}})
    assert r.status_code == 404
    r = await client.post("/v1/identity-links", headers=OPS, json=link | {"reason": "x"})
    assert r.status_code == 422
    r = await client.post("/v1/identity-links", headers=OPS, json=link)
    assert r.status_code == 201, r.text
    linked = await persons()
    assert linked["COUNTYGEN"] == linked["STMARY"] == uuid.UUID(r.json()["person_id"])
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(DISTINCT person_id) FROM identity")) == 1

    unlink = {"identifier": {"authority": "STMARY", "value": "S-9"}, "reason": "different people"}
    for headers in (PARTNER, TOC):
        r = await client.post("/v1/identity-unlinks", headers=headers, json=unlink)
        assert r.status_code == 403 and "ops" in r.json()["detail"], r.text
    assert await persons() == linked
    r = await client.post("/v1/identity-unlinks", headers=OPS, json=unlink)
    assert r.status_code == 201, r.text
    split = await persons()
    assert split["STMARY"] == uuid.UUID(r.json()["person_id"])
    assert split["COUNTYGEN"] == linked["COUNTYGEN"] and split["STMARY"] != split["COUNTYGEN"]
    async with engine.connect() as conn:
        links = (await conn.execute(text("SELECT action, key_a, key_b, actor, reason FROM identity_link ORDER BY id")))\
            .all()
    c1, s9 = identity_key("COUNTYGEN", "C-1"), identity_key("STMARY", "S-9")
    assert [tuple(x) for x in links] == [
        ("link", c1, s9, "olga.ops", "same name, birth date and address"),
        ("unlink", s9, s9, "olga.ops", "different people"),
    ]
    assert [(a.actor, a.action, a.person_id, a.detail) for a in await audit_rows(engine)] == [
        ("olga.ops", "link", linked["COUNTYGEN"], "same name, birth date and address"),
        ("olga.ops", "unlink", split["STMARY"], "different people"),
    ]


# --- services and measures -----------------------------------------------------------------


def pt(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=PACIFIC)


async def toc_enrollee(
    engine: AsyncEngine, store: EnrollmentStore, mrn: str, medi_cal_id: str, discharge: dt.datetime
) -> Applied:
    """Admitted the day before ``discharge``, enrolled (in November 2026) the hour after admission."""
    admit = discharge - dt.timedelta(days=1)
    made = await toc_candidate(engine, store, mrn, medi_cal_id, admit=admit, discharge=discharge)
    async with engine.begin() as conn:
        assert made.candidate_id is not None
        await store.transition(conn, made.candidate_id, "consent", actor="nurse", reason=None,
                               now=admit + dt.timedelta(hours=1))
    return made


async def service(client: httpx.AsyncClient, candidate_id: object, kind: str, at: dt.datetime) -> None:
    r = await client.post(f"/v1/candidates/{candidate_id}/services", headers=TOC,
                          json={"kind": kind, "at": at.isoformat()})
    assert r.status_code == 201, r.text
    assert r.json() == {"id": str(candidate_id), "kind": kind}


async def test_toc_measures_count_home_visits_within_three_business_days(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    assert pt(20, 12).weekday() == 4  # Friday 2026-11-20
    on_time = await toc_enrollee(engine, store, "P-1", "91000001A", pt(20, 12))
    late = await toc_enrollee(engine, store, "P-2", "91000002A", pt(20, 12))
    await service(client, on_time.candidate_id, "home_visit", pt(24, 10))  # Tuesday: 2 business days
    # PCP notices are the notifier's to record (enrollment_svc.reported): a hand-made one is refused.
    r = await client.post(f"/v1/candidates/{on_time.candidate_id}/services", headers=TOC,
                          json={"kind": "pcp_notified", "at": pt(21, 9).isoformat()})
    assert r.status_code == 422
    await service(client, on_time.candidate_id, "pcp_appointment", pt(30, 9))
    await service(client, late.candidate_id, "home_visit", pt(26, 10))  # next Thursday: 4 business days
    await service(client, late.candidate_id, "pcp_appointment", dt.datetime(2027, 1, 5, 9, tzinfo=PACIFIC))

    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT candidate_id, kind, at, actor FROM service_record ORDER BY id"))).all()
    assert [(r.candidate_id, r.kind, r.actor) for r in rows][:2] == [
        (on_time.candidate_id, "home_visit", "maria.lopez"), (on_time.candidate_id, "pcp_appointment", "maria.lopez")
    ]
    assert rows[0].at == pt(24, 10)

    r = await client.get("/v1/measures", params={"month": "2026-11"}, headers=OPS)
    assert r.status_code == 200, r.text
    toc = r.json()["programs"]["TOC"]
    assert toc["enrolled"] == 2
    # No figure from the notifier yet (test_pcp_measure has the notifier's): none, and why.
    assert toc["pcp_notified_share"] is None and toc["pcp_notified"]["source"] == "notifier"
    assert toc["visit_within_3_business_days_share"] == 0.5
    assert toc["pcp_appointment_within_1_month_share"] == 0.5
    assert toc["readmissions_30d"] == {"discharges": 2, "readmitted": 0, "rate": 0.0}

    # Only enrollments of the month count; a care team member may read the measures, a partner may not.
    r = await client.get("/v1/measures", params={"month": "2026-10"}, headers=TOC)
    assert r.status_code == 200 and r.json()["programs"] == {}
    r = await client.get("/v1/measures", params={"month": "2026-11", "program": "ISR"}, headers=TOC)
    assert r.json()["programs"]["ISR"]["enrolled"] == 0
    assert (await client.get("/v1/measures", params={"month": "2026-11"}, headers=PARTNER)).status_code == 403
    assert (await client.get("/v1/measures", params={"month": "11-2026"}, headers=OPS)).status_code == 422
    assert (await client.get("/v1/measures", params={"month": "2026-13"}, headers=OPS)).status_code == 422
    # A service time without an offset is refused.
    r = await client.post(f"/v1/candidates/{late.candidate_id}/services", headers=TOC,
                          json={"kind": "home_visit", "at": "2026-11-23T10:00:00"})
    assert r.status_code == 422


async def test_business_days_are_counted_in_local_dates(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    # Discharged Friday 17:30 Pacific (Saturday 01:30 UTC): the third business day is Wednesday,
    # all of it, whatever the hour of the discharge.
    evening = await toc_enrollee(engine, store, "P-1", "91000001A", pt(20, 17, 30))
    await service(client, evening.candidate_id, "home_visit", pt(25, 16))
    noon = await toc_enrollee(engine, store, "P-2", "91000002A", pt(20, 12))
    await service(client, noon.candidate_id, "home_visit", pt(25, 15))
    r = await client.get("/v1/measures", params={"month": "2026-11", "program": "TOC"}, headers=OPS)
    assert r.status_code == 200
    assert r.json()["programs"]["TOC"]["visit_within_3_business_days_share"] == 1.0


async def test_feed_findings_per_facility_for_ops_without_phi(
    engine: AsyncEngine, store: EnrollmentStore, client: httpx.AsyncClient
) -> None:
    at = NOW - dt.timedelta(hours=6)
    # STMARY gives two patients one visit number; its clock runs 8 hours ahead on both messages.
    for mrn, mc in (("R-1", "91111111A"), ("R-2", "92222222B")):
        raw = adt("A04", facility="STMARY", mrn=mrn, visit="V77", patient_class="E", at=at + dt.timedelta(hours=8),
                  admit=at, medi_cal_id=mc)
        await apply(engine, store, event(raw, received_at=at), NOW)
    r = await client.get("/v1/feed-findings", headers=OPS)
    assert r.status_code == 200
    found = {(f["facility"], f["kind"]): f for f in r.json()}
    assert {k: f["count"] for k, f in found.items()} == {
        ("STMARY", "clock_ahead"): 2, ("STMARY", "visit_number_reused"): 1
    }
    assert set(found["STMARY", "clock_ahead"]) == {"facility", "kind", "count", "first_seen", "last_seen"}
    assert "R-1" not in r.text and "R-2" not in r.text and "V77" not in r.text
    r = await client.get("/v1/feed-findings", params={"facility": "COUNTYGEN"}, headers=OPS)
    assert r.status_code == 200 and r.json() == []
    assert (await client.get("/v1/feed-findings", headers=TOC)).status_code == 403
