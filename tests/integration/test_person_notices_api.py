"""`GET /v1/persons/{id}/notices` (notifier.api, issue 13): who was told what about a person and
when, with each delivery's status and the person's consents; over ASGI, real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.integration.test_notifier_api import ALL_TEAMS, OPS, PLAN, SUD, TOC, client, rig
from tests.integration.test_notifier_flow import Rig, admission, candidate, enroll, feed_adt, rig_factory

_ = (client, rig, rig_factory)  # fixtures, imported for pytest


async def test_who_was_told_what_with_delivery_status_and_consents(client: httpx.AsyncClient, rig: Rig) -> None:
    cand = candidate("TOC")
    await enroll(rig, cand)
    await feed_adt(rig, admission("A01", facility="STMARY", visit="N1", dx=("F11.20",)))
    await rig.deliver(rounds=3)
    consent = {"person_id": str(cand.person_id), "scope": "care_team", "granted_at": "2026-11-17T10:00:00-08:00",
               "source": "signed form"}
    assert (await client.post("/v1/consents", json=consent, headers=TOC)).status_code == 201

    r = await client.get(f"/v1/persons/{cand.person_id}/notices", headers=TOC)
    assert r.status_code == 200, r.text
    body = r.json()
    kinds = {(n["recipient_id"], n["event_kind"]) for n in body["notices"]}
    assert ("toc-team", "candidate") in kinds
    assert any(kind == "enrolled" for _, kind in kinds)  # the PCP was told of the enrollment
    told = [n for n in body["notices"] if n["recipient_id"] == "toc-team" and n["event_kind"] == "candidate"]
    assert told[0]["recipient_name"] and told[0]["deliveries"], told
    assert {d["status"] for n in body["notices"] for d in n["deliveries"]} <= {"queued", "sent", "delivered", "failed"}
    assert any(d["status"] == "delivered" for n in body["notices"] for d in n["deliveries"])
    [recorded] = body["consents"]
    assert (recorded["scope"], recorded["active"], recorded["recorded_by"]) == ("care_team", True, "maria.lopez")
    assert body["part2"]["sud_code_prefixes"] and isinstance(body["part2"]["facilities"], list)
    audit = await rig.rows("SELECT actor, action, person_id FROM audit WHERE action = 'read_notices'")
    assert [(a["actor"], a["person_id"]) for a in audit] == [("maria.lopez", cand.person_id)]


async def test_only_the_persons_program_teams_and_ops_read_it(client: httpx.AsyncClient, rig: Rig) -> None:
    cand = candidate("TOC")
    await enroll(rig, cand)
    url = f"/v1/persons/{cand.person_id}/notices"
    for headers, code in ((TOC, 200), (ALL_TEAMS, 200), (OPS, 200), (SUD, 403), (PLAN, 403)):
        r = await client.get(url, headers=headers)
        assert r.status_code == code, (headers, r.text)
    unknown: Any = await client.get(f"/v1/persons/{uuid.uuid4()}/notices", headers=TOC)
    assert unknown.status_code == 403
    assert (await client.get(f"/v1/persons/{uuid.uuid4()}/notices", headers=OPS)).json()["notices"] == []
