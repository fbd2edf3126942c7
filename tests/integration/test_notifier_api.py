"""The notifier's API over ASGI, against the real PostgreSQL: roles, rosters (JSON and CSV),
panels that make alerts, consents that lift the Part 2 redaction, failures and re-sends,
the PCP-notified measure."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from notifier.api import notifier_router
from services.auth import User, Users
from tests.integration.test_notifier_flow import (
    MEDI_CAL,
    NOW,
    TOPICS,
    Rig,
    admission,
    candidate,
    enroll,
    feed_adt,
    rig_factory,
    status,
)

TOKENS = {
    "tok-ops": User("olga.ops", frozenset({"ops"})),
    "tok-plan": User("plan-feed", frozenset({"partner"})),
    "tok-toc": User("maria.lopez", frozenset({"care_team:TOC"})),
    "tok-sud": User("sam.reyes", frozenset({"care_team:SUD-ENS"})),
    "tok-all": User("ana.lead", frozenset({"care_team:*"})),
}
_ = rig_factory  # a fixture, imported for pytest
OPS = {"Authorization": "Bearer tok-ops"}
PLAN = {"Authorization": "Bearer tok-plan"}
TOC = {"Authorization": "Bearer tok-toc"}
SUD = {"Authorization": "Bearer tok-sud"}
ALL_TEAMS = {"Authorization": "Bearer tok-all"}


@pytest.fixture
async def rig(rig_factory: Any) -> Rig:
    made: Rig = await rig_factory()
    return made


@pytest.fixture
async def client(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.users = Users({hashlib.sha256(t.encode()).hexdigest(): u for t, u in TOKENS.items()})
    app.include_router(notifier_router(rig.engine, rig.cfg, clock=rig.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_roles_are_checked_on_every_endpoint(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/deliveries")).status_code == 401
    assert (await client.get("/v1/deliveries", headers=TOC)).status_code == 403
    assert (await client.get("/v1/measures/pcp-notified", headers=PLAN)).status_code == 403
    assert (await client.put("/v1/panels/clinic", json={"members": []}, headers=TOC)).status_code == 403
    consent = {"person_id": str(uuid.uuid4()), "scope": "pcp", "granted_at": NOW.isoformat(), "source": "f"}
    assert (await client.post("/v1/consents", json=consent, headers=PLAN)).status_code == 403
    assert (await client.post("/v1/consents/1/revoke", headers=PLAN)).status_code == 403


async def test_a_roster_loads_as_json_or_csv_and_rejects_unknown_practices(
    client: httpx.AsyncClient, rig: Rig
) -> None:
    body = {"source": "LA Care", "entries": [
        {"member_id": "95000000a", "practice_id": "clinic", "effective_from": "2026-01-01"}]}
    assert (await client.post("/v1/roster", json=body, headers=PLAN)).json() == {"loaded": 1}
    csv_text = "member_id,practice_id,effective_from,effective_to\n95000001B,fqhc,2026-02-01,2026-12-31\n"
    answer = await client.post("/v1/roster?source=Health%20Net", content=csv_text,
                               headers={**OPS, "content-type": "text/csv"})
    assert answer.json() == {"loaded": 1}
    rows = await rig.rows("SELECT member_id, practice_id, source FROM roster ORDER BY member_id")
    assert [tuple(r) for r in rows] == [("95000000A", "clinic", "LA Care"), ("95000001B", "fqhc", "Health Net")]
    bad = await client.post("/v1/roster", json={"source": "x", "entries": [
        {"member_id": "1", "practice_id": "nowhere", "effective_from": "2026-01-01"}]}, headers=PLAN)
    assert bad.status_code == 422 and "nowhere" in bad.text
    team = await client.post("/v1/roster", json={"source": "x", "entries": [
        {"member_id": "1", "practice_id": "toc-team", "effective_from": "2026-01-01"}]}, headers=PLAN)
    assert team.status_code == 422 and "toc-team" in team.text  # a care team is not a PCP
    backwards = "member_id,practice_id,effective_from,effective_to\n1,clinic,2026-05-01,2026-01-01\n"
    answer = await client.post("/v1/roster?source=x", content=backwards, headers={**PLAN, "content-type": "text/csv"})
    assert answer.status_code == 422 and "line 2" in answer.text
    no_source = await client.post("/v1/roster", content=csv_text, headers={**PLAN, "content-type": "text/csv"})
    assert no_source.status_code == 422


async def test_a_panel_makes_its_holder_hear_of_its_members_encounters(client: httpx.AsyncClient, rig: Rig) -> None:
    panel = {"members": [{"medi_cal_id": MEDI_CAL}, {"authority": "HARBOR", "value": "H-1"}]}
    assert (await client.put("/v1/panels/toc-team", json=panel, headers=PLAN)).json() == {"members": 2}
    assert (await client.put("/v1/panels/nobody", json=panel, headers=PLAN)).status_code == 404
    assert (await client.put("/v1/panels/toc-team", json={"members": [{"authority": "X"}]},
                             headers=PLAN)).status_code == 422
    await feed_adt(rig, admission("A01", facility="STMARY", dx=("I10",)))
    await rig.deliver()
    (body,) = rig.bodies("/hooks/toc")
    notice = body["notices"][0]
    assert notice["event"] == "admit" and "program" not in notice and "person_id" not in notice
    # A panel replaced by an empty one: no more alerts.
    assert (await client.put("/v1/panels/toc-team", json={"members": []}, headers=OPS)).json() == {"members": 0}
    await feed_adt(rig, admission("A01", facility="STMARY", visit="V101"))
    await rig.deliver()
    assert len(rig.bodies("/hooks/toc")) == 1


async def test_a_recorded_consent_lifts_the_redaction_and_a_revoked_one_restores_it(
    client: httpx.AsyncClient, rig: Rig
) -> None:
    cand = candidate("SUD-ENS")
    await enroll(rig, cand)
    consent = {"person_id": str(cand.person_id), "scope": "pcp", "granted_at": "2026-11-17T10:00:00-08:00",
               "source": "signed form in the county EHR"}
    naive = {**consent, "granted_at": "2026-11-17T10:00:00"}
    assert (await client.post("/v1/consents", json=naive, headers=SUD)).status_code == 422
    answer = await client.post("/v1/consents", json=consent, headers=SUD)
    assert answer.status_code == 201
    consent_id = answer.json()["consent_id"]
    await feed_adt(rig, admission("A01", facility="STMARY", visit="C1", dx=("F11.20",)))
    await rig.deliver()
    assert _fhir_codes(rig) == [["F11.20"]]
    assert (await client.post(f"/v1/consents/{consent_id}/revoke", headers=SUD)).json() == {"status": "revoked"}
    assert (await client.post(f"/v1/consents/{consent_id}/revoke", headers=SUD)).status_code == 404
    await feed_adt(rig, admission("A01", facility="STMARY", visit="C2", dx=("F11.20",)))
    await rig.deliver()
    assert _fhir_codes(rig) == [["F11.20"], []]
    actions = [r["action"] for r in await rig.rows("SELECT action FROM audit WHERE actor = 'sam.reyes' ORDER BY id")]
    assert actions == ["consent", "consent_revoked"]


async def test_a_part2_consent_is_the_business_of_the_persons_program_team_or_ops(
    client: httpx.AsyncClient, rig: Rig
) -> None:
    sud = candidate("SUD-ENS")  # only a SUD-ENS candidate: proposed, no status yet
    await rig.feed(TOPICS.candidates, sud)

    def consent(person: uuid.UUID) -> dict[str, str]:
        return {"person_id": str(person), "scope": "care_team", "granted_at": "2026-11-17T10:00:00-08:00",
                "source": "signed form in the county EHR"}

    async def active_consents() -> int:
        return len(await rig.rows("SELECT id FROM consent WHERE revoked_at IS NULL"))

    refused = await client.post("/v1/consents", json=consent(sud.person_id), headers=TOC)
    assert refused.status_code == 403
    detail = refused.json()["detail"]
    assert "ops" in detail and "care team" in detail and "SUD" not in detail  # no word of the person's program
    unknown = await client.post("/v1/consents", json=consent(uuid.uuid4()), headers=TOC)
    assert unknown.status_code == 403 and unknown.json()["detail"] == detail  # nor whether the notifier knows them
    assert (await client.post("/v1/consents", json=consent(sud.person_id), headers=PLAN)).status_code == 403
    assert await active_consents() == 0

    by_team = await client.post("/v1/consents", json=consent(sud.person_id), headers=SUD)
    assert by_team.status_code == 201, by_team.text
    assert (await client.post("/v1/consents", json=consent(sud.person_id), headers=ALL_TEAMS)).status_code == 201
    assert (await client.post("/v1/consents", json=consent(sud.person_id), headers=OPS)).status_code == 201
    assert await active_consents() == 3

    # Revoking: the same rule. The TOC team cannot withdraw what it could not record.
    consent_id = by_team.json()["consent_id"]
    revoke = f"/v1/consents/{consent_id}/revoke"
    assert (await client.post(revoke, headers=TOC)).status_code == 403
    assert await active_consents() == 3
    assert (await client.post(revoke, headers=SUD)).json() == {"status": "revoked"}

    # A TOC enrollee: the TOC team records the consent.
    toc = candidate("TOC")
    await enroll(rig, toc)
    assert (await client.post("/v1/consents", json=consent(toc.person_id), headers=TOC)).status_code == 201
    assert (await client.post("/v1/consents", json=consent(toc.person_id), headers=SUD)).status_code == 403

    # A candidacy that ended (declined) is no longer the team's: ops then.
    declined = candidate("SUD-ENS")
    await rig.feed(TOPICS.candidates, declined)
    await rig.feed(TOPICS.enrollment_events, status(declined, "declined"))
    assert (await client.post("/v1/consents", json=consent(declined.person_id), headers=SUD)).status_code == 403
    assert (await client.post("/v1/consents", json=consent(declined.person_id), headers=OPS)).status_code == 201

    recorded = [(r["actor"], r["action"]) for r in await rig.rows(
        "SELECT actor, action FROM audit WHERE action LIKE 'consent%' ORDER BY id")]
    assert recorded == [
        ("sam.reyes", "consent"), ("ana.lead", "consent"), ("olga.ops", "consent"),
        ("sam.reyes", "consent_revoked"), ("maria.lopez", "consent"), ("olga.ops", "consent"),
    ]


def _fhir_codes(rig: Rig) -> list[list[str]]:
    out = []
    for r in rig.hooks.requests:
        if r.path == "/fhir/$process-message":
            bundle = json.loads(r.body)
            out.append([e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]
                        if e["resource"]["resourceType"] == "Condition"])
    return out


async def test_failures_are_listed_and_resent(client: httpx.AsyncClient, rig: Rig) -> None:
    await rig.feed(TOPICS.candidates, candidate("TOC"))
    rig.hooks.mode = "400"
    await rig.deliver()
    (failed,) = (await client.get("/v1/deliveries?status=failed", headers=OPS)).json()
    assert failed["recipient_id"] == "toc-team" and failed["attempts"] == 1 and "400" in failed["last_error"]
    assert "body" not in failed
    rig.hooks.mode = "ok"
    assert (await client.post(f"/v1/deliveries/{failed['delivery_id']}/resend", headers=OPS)).status_code == 202
    assert (await client.post(f"/v1/deliveries/{failed['delivery_id']}/resend", headers=OPS)).status_code == 409
    await rig.deliver()
    (done,) = (await client.get("/v1/deliveries", headers=OPS)).json()
    assert done["status"] == "delivered"
    assert len(rig.hooks.unique) == 1


async def test_the_pcp_notified_measure(client: httpx.AsyncClient, rig: Rig) -> None:
    await enroll(rig, candidate("TOC"))
    await enroll(rig, candidate("TOC", pcp=None))
    await rig.deliver()
    answer = (await client.get("/v1/measures/pcp-notified", headers=OPS)).json()
    assert answer == [{"program": "TOC", "month": "2026-11", "enrolled": 2, "pcp_notified": 1, "share": 0.5}]
