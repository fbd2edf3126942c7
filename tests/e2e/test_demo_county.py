"""`wpc up` in demo mode (no WPC_NOTIFY_FILE, no WPC_USERS_FILE), a real process with its
embedded PostgreSQL and broker: it feeds the demo county by itself, and what the issue
promises for the first minute arrives in the demo inbox (TOC, ISR and SUD-ENS candidate
notices, PCP notices by FHIR and by e-mail, a digest, a Part 2 redaction); then
``wpc demo-traffic`` sends more to it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import eventually
from tests.e2e.up_process import UpProcess

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[UpProcess]:
    process = UpProcess(tmp_path / "data", tmp_path)
    for name in ("WPC_NOTIFY_FILE", "WPC_USERS_FILE"):  # demo mode
        process.env.pop(name, None)
    yield process
    process.cleanup()


def _received(run: UpProcess) -> list[dict[str, Any]]:
    answer = httpx.get(f"http://127.0.0.1:{run.env['WPC_DEMO_INBOX_PORT']}/v1/received", timeout=5)
    answer.raise_for_status()
    items: list[dict[str, Any]] = answer.json()
    return items


def _complete(items: list[dict[str, Any]]) -> bool:
    teams = {i["recipient"] for i in items if i["channel"] == "webhook" and "candidate" in i["kinds"]}
    fhir = any(i["recipient"] == "demo-clinic" and i["channel"] == "fhir" for i in items)
    mail = any(i["recipient"] == "eastside-clinic" and i["channel"] == "email" for i in items)
    return teams >= {"toc-team", "isr-team", "sud-ens-team"} and fhir and mail


async def test_the_first_minute_of_the_demo(run: UpProcess) -> None:
    await run.start()
    items: list[dict[str, Any]] = []

    def arrived() -> bool:
        items[:] = _received(run)
        return _complete(items)

    # The e-mail digest is due a minute after start; a loaded machine gets some slack.
    await eventually(arrived, 150, "the demo inbox did not get every kind of notice")
    assert "demo county: 31 ADT messages sent (31 accepted)" in run.output()

    candidates = {i["recipient"]: i["body"]["notices"][0] for i in items if "candidate" in i["kinds"]}
    assert candidates["toc-team"]["program"] == "TOC"
    assert candidates["isr-team"]["program"] == "ISR"
    sud = candidates["sud-ens-team"]
    assert sud["program"] == "SUD-ENS"  # a Part 2 program: nothing withheld from it
    assert sud["withheld"] == []

    # The e-mail clinic: its three patients' ED visits in one digest, and no PHI in it.
    mails = [i for i in items if i["channel"] == "email"]
    assert len(mails) == 1
    assert mails[0]["subject"] == "WPC: 3 notifications"
    body = mails[0]["body"]
    assert body.count("- admission and discharge, reference ") == 3
    assert not any(word in body for word in ("HARBOR", "OLIVEVIEW", "COUNTYGEN", "MEDI-CAL", "R07.9", "N39.0"))

    # The FHIR clinic: the same SUD-ENS patient's ED visit at County General, without the SUD
    # diagnosis (42 CFR Part 2, no consent) but with the chest pain; the sobering center's
    # visit (a Part 2 program) is not told at all.
    bundles = [json.dumps(i["body"]) for i in items if i["channel"] == "fhir"]
    ed = [b for b in bundles if "COUNTYGEN" in b]
    assert len(ed) == 1 and "R07.9" in ed[0] and "F10" not in ed[0]
    assert not any("DTSOBERING" in b for b in bundles)
    assert any("notification-admit" in b and "STMARY" in b for b in bundles)  # the TOC patient's admission

    # Every API's /docs works offline, and OpenAPI declares the bearer scheme and the models.
    ports = {name: int(run.env[f"WPC_{name.upper()}_HTTP_PORT"]) for name in ("listener", "enrollment", "notifier")}
    async with httpx.AsyncClient(timeout=10) as client:
        for name, port in ports.items():
            page = await client.get(f"http://127.0.0.1:{port}/docs")
            assert page.status_code == 200 and "://" not in page.text, name
            assert (await client.get(f"http://127.0.0.1:{port}/docs/assets/swagger-ui-bundle.js")).status_code == 200
        for name in ("enrollment", "notifier"):
            spec = (await client.get(f"http://127.0.0.1:{ports[name]}/openapi.json")).json()
            assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
                "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"][
                    "HTTPBearer"]["description"]}
            main = "/v1/measures" if name == "enrollment" else "/v1/deliveries"
            assert spec["paths"][main]["get"]["security"] == [{"HTTPBearer": []}]
            answer = spec["paths"][main]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            assert "Out" in json.dumps(answer), answer

    # More traffic, to the running system, found by its run.json.
    sent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wpc.cli", "demo-traffic", "--rate", "20", "--duration", "3",
        env=run.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(sent.communicate(), 60)
    assert sent.returncode == 0, err.decode()
    counts = out.decode().strip().splitlines()[-1]
    assert counts.startswith("sent ") and ", other ACKs: none" in counts
    n = int(counts.split()[1].rstrip(","))
    assert n > 10
