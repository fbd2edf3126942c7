"""The candidate / person page and its actions in a real browser (issue 13, pages 2 and 3):
accept → outreach attempt → home visit on the page; a second accept told who and when;
42 CFR Part 2 redaction without the patient's consent and not with it; a TOC user refused
a SUD-ENS candidate by URL; bad form input answered with a 4xx page, never a 500.

Candidates are made the way hospitals make them: ADT over MLLP into the running `wpc up`."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from services.auth import ACTING_USER_HEADER
from tests.adt_builder import adt
from tests.browser.conftest import Browser, System
from wpc.tools.send import MllpClient

PT = dt.timezone(dt.timedelta(hours=-8))

pytestmark = pytest.mark.timeout(240)


def _text(browser: Browser) -> str:
    return str(browser.driver.find_element(By.TAG_NAME, "body").text)


def _unique() -> str:
    return f"{time.time_ns() % 10**9:09d}"


def _toc_feed(now: dt.datetime, mrn: str, medi_cal: str) -> list[bytes]:
    """Two past stays, then today's admission with SUD and COPD diagnoses: a TOC candidate."""
    out: list[bytes] = []
    for n, (facility, days) in enumerate((("HARBOR", 120), ("OLIVEVIEW", 45)), start=1):
        admit = now - dt.timedelta(days=days)
        end = admit + dt.timedelta(days=2)
        out.append(adt("A01", facility=facility, mrn=mrn, visit=f"{mrn}V{n}", at=admit, admit=admit,
                       medi_cal_id=medi_cal))
        out.append(adt("A03", facility=facility, mrn=mrn, visit=f"{mrn}V{n}", at=end, admit=admit, discharge=end,
                       medi_cal_id=medi_cal))
    # Half an hour ago, but not before the site's midnight: the page says "today" of it (a run
    # between 00:00 and 00:30 Pacific time once read "yesterday").
    admit = max(now - dt.timedelta(minutes=30), now.replace(hour=0, minute=0, second=0, microsecond=0))
    out.append(adt("A01", facility="COUNTYGEN", mrn=mrn, visit=f"{mrn}V3", at=admit, admit=admit,
                   medi_cal_id=medi_cal, dx=("F10.20", "J44.1"), phone="(213)555-0147", room="412"))
    return out


def _sud_ens_feed(now: dt.datetime, mrn: str, medi_cal: str) -> list[bytes]:
    """Three ED visits with opioid use disorder in a year: a SUD-ENS candidate."""
    return [adt("A04", facility="COUNTYGEN", mrn=mrn, visit=f"{mrn}E{n}", patient_class="E", at=at, admit=at,
                medi_cal_id=medi_cal, dx=("F11.20",))
            for n, at in enumerate((now - dt.timedelta(days=100), now - dt.timedelta(days=40),
                                    now - dt.timedelta(minutes=20)), start=1)]


async def _send(system: System, messages: list[bytes]) -> None:
    client = await MllpClient.connect("127.0.0.1", system.mllp_port)
    try:
        for message in messages:
            await client.send(message, timeout=15)
    finally:
        await client.close()


async def _candidate_of(system: System, mrn: str, program: str, timeout_s: float = 90) -> tuple[str, str]:
    """(candidate id, person id) of the MRN's candidate of ``program``, once the services made it."""
    dsn = system.up.env["WPC_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            row = await conn.fetchrow(
                "SELECT c.id, c.person_id FROM candidate c JOIN identity i ON i.person_id = c.person_id "
                "WHERE i.value = $1 AND c.program = $2 AND c.status = 'pending'", mrn, program)
            if row is not None:
                return str(row["id"]), str(row["person_id"])
            assert time.monotonic() < deadline, f"no {program} candidate was made for the test's patient"
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def toc_case(system: System) -> AsyncIterator[tuple[str, str]]:
    mrn = f"PG{_unique()}"
    await _send(system, _toc_feed(dt.datetime.now(PT), mrn, f"9{_unique()}A"))
    yield await _candidate_of(system, mrn, "TOC")


def _open(browser: Browser, system: System, user: str, candidate_id: str) -> None:
    browser.sign_in(system.web_url, user)
    browser.wait_for(lambda drv: "/signin" not in drv.current_url, "not signed in")
    browser.driver.get(f"{system.web_url}/candidates/{candidate_id}")


def _shot(browser: Browser, name: str) -> None:
    """The whole page, not only the window: the window made as tall as the page for the shot."""
    d = browser.driver
    height = int(d.execute_script("return document.documentElement.scrollHeight"))
    d.set_window_size(1280, max(800, min(height, 4000)))
    browser.shot(name)
    d.set_window_size(1280, 800)


def _post_in_page(browser: Browser, path: str, form: dict[str, str]) -> tuple[int, str]:
    """POST a form from the signed-in page (its CSRF token), as a hand-made request would."""
    result: Any = browser.driver.execute_async_script(
        """const [path, form, done] = arguments;
        const body = new URLSearchParams(form);
        body.set('csrf_token', document.querySelector('input[name=csrf_token]').value);
        fetch(path, {method: 'POST', body: body, credentials: 'same-origin', redirect: 'manual'})
          .then(r => r.text().then(t => done([r.status, t])));""", path, form)
    return int(result[0]), str(result[1])


def test_accept_then_outreach_then_home_visit_show_on_the_page(
    system: System, browser: Browser, toc_case: tuple[str, str]
) -> None:
    candidate_id, _ = toc_case
    d = browser.driver
    _open(browser, system, "toc", candidate_id)
    page = _text(browser)
    assert "ALEX DOE" in page and "(213)555-0147" in page and "room 412" in page
    assert "3 inpatient admissions in 6 months: Harbor" in page and "Olive View" in page and "today" in page
    _shot(browser, "candidate")

    d.find_element(By.XPATH, "//summary[contains(., 'Accept')]").click()
    d.find_element(By.ID, "confirm-accept").click()
    browser.wait_for(lambda drv: "Accepted: outreach started." in _text(browser), "no confirmation of the accept")
    assert d.find_element(By.ID, "candidate-status").text == "accepted"

    d.find_element(By.XPATH, "//summary[contains(., 'outreach attempt')]").click()
    Select(d.find_element(By.ID, "o-channel")).select_by_value("phone")
    Select(d.find_element(By.ID, "o-outcome")).select_by_value("no_answer")
    d.find_element(By.ID, "o-note").send_keys("left a voicemail")
    d.find_element(By.ID, "confirm-outreach").click()
    browser.wait_for(lambda drv: "Outreach attempt recorded." in _text(browser), "no outreach confirmation")
    log = d.find_element(By.ID, "outreach-log").text
    assert "phone" in log and "no answer" in log and "toc" in log and "left a voicemail" in log

    d.find_element(By.XPATH, "//summary[contains(., 'visit or appointment')]").click()
    Select(d.find_element(By.ID, "s-kind")).select_by_value("home_visit")
    d.find_element(By.ID, "confirm-service").click()
    browser.wait_for(lambda drv: "Service recorded." in _text(browser), "no service confirmation")
    assert "home visit" in d.find_element(By.ID, "services-log").text
    _shot(browser, "candidate-after-actions")

    # A second accept (a colleague's stale page): the clear answer, never a 500.
    status, body = _post_in_page(browser, f"/candidates/{candidate_id}/accept", {})
    assert status == 409 and "already accepted by toc at" in body


def _enrolled_this_month(browser: Browser, system: System) -> int:
    """The TOC measures page's "Enrolled per month" figure for this month (site time)."""
    browser.driver.get(f"{system.web_url}/measures?program=TOC&months=3")
    line = browser.driver.find_element(By.CSS_SELECTOR, "p.enrolled").text
    month = dt.datetime.now(ZoneInfo("America/Los_Angeles")).strftime("%Y-%m")
    found = re.search(rf"{month}: (\d+)", line)
    assert found, line
    return int(found.group(1))


async def test_accept_and_consent_change_the_measures_page(system: System, browser: Browser) -> None:
    """A candidate of its own (the module's one stays accepted for the tests below): accept →
    consent on the page, and the program's measures count the enrollment (issue 13: "the
    measures page changes")."""
    mrn = f"PM{_unique()}"
    await _send(system, _toc_feed(dt.datetime.now(PT), mrn, f"8{_unique()}A"))
    candidate_id, _ = await _candidate_of(system, mrn, "TOC")
    browser.sign_in(system.web_url, "toc")
    browser.wait_for(lambda drv: "/signin" not in drv.current_url, "not signed in")
    before = _enrolled_this_month(browser, system)
    browser.driver.get(f"{system.web_url}/candidates/{candidate_id}")
    d = browser.driver
    d.find_element(By.XPATH, "//summary[contains(., 'Accept')]").click()
    d.find_element(By.ID, "confirm-accept").click()
    browser.wait_for(lambda drv: "Accepted: outreach started." in _text(browser), "no confirmation of the accept")
    d.find_element(By.XPATH, "//summary[contains(., 'Consent given')]").click()
    d.find_element(By.ID, "confirm-consent").click()
    browser.wait_for(lambda drv: "Enrolled: the patient's consent is recorded." in _text(browser),
                     "no confirmation of the consent")
    assert d.find_element(By.ID, "candidate-status").text == "enrolled"
    assert _enrolled_this_month(browser, system) == before + 1
    _shot(browser, "measures-after-enrollment")


def test_bad_form_input_gets_a_4xx_page_never_a_500(
    system: System, browser: Browser, toc_case: tuple[str, str]
) -> None:
    candidate_id, _ = toc_case
    _open(browser, system, "toc", candidate_id)
    base = f"/candidates/{candidate_id}"
    cases = [
        (f"{base}/outreach", {"at": "2026-12-02T10:00", "channel": "fax", "outcome": "reached"}),
        (f"{base}/outreach", {"at": "yesterday-ish", "channel": "phone", "outcome": "reached"}),
        (f"{base}/outreach", {"at": "2999-01-01T10:00", "channel": "phone", "outcome": "reached"}),  # the future
        (f"{base}/outreach", {"at": "2026-12-02T10:00", "channel": "phone", "outcome": "reached", "note": "x" * 600}),
        (f"{base}/outreach", {"channel": "phone"}),
        (f"{base}/services", {"kind": "massage", "at": "2026-12-02T10:00"}),
        (f"{base}/decline", {"reason": "busy"}),
        (f"{base}/disenroll", {"reason": "handoff_complete"}),  # not enrolled: the API's 409
        ("/candidates/not-a-uuid/accept", {}),
    ]
    for path, form in cases:
        status, body = _post_in_page(browser, path, form)
        assert 400 <= status < 500, (path, form, status)
        assert "Something went wrong on our side" not in body
    browser.driver.get(f"{system.web_url}/candidates/not-a-uuid")
    assert "HTTP 400" in _text(browser)
    _shot(browser, "candidate-bad-input")


async def test_part2_redaction_without_consent_and_not_with_it(system: System, browser: Browser) -> None:
    mrn = f"PC{_unique()}"
    await _send(system, _toc_feed(dt.datetime.now(PT), mrn, f"8{_unique()}A"))
    candidate_id, person_id = await _candidate_of(system, mrn, "TOC")
    _open(browser, system, "toc", candidate_id)
    page = _text(browser)
    assert "F10.20" not in page and "substance" not in page.lower()
    assert "J44.1" in page  # the rest of the diagnoses stay
    assert "42 CFR Part 2" in browser.driver.find_element(By.ID, "part2-notice").text
    _shot(browser, "candidate-part2-redacted")

    # The TOC team records the patient's consent to care teams (notifier API, as the user "toc").
    headers = {"Authorization": f"Bearer {system.api_token}", ACTING_USER_HEADER: "toc"}
    notifier = f"http://127.0.0.1:{system.up.env['WPC_NOTIFIER_HTTP_PORT']}"
    consent = {"person_id": person_id, "scope": "care_team", "granted_at": dt.datetime.now(PT).isoformat(),
               "source": "signed form at the bedside"}
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while True:  # the notifier learns of the candidate from enrollment.candidates
            answer = await client.post(f"{notifier}/v1/consents", json=consent, headers=headers)
            if answer.status_code == 201:
                break
            assert answer.status_code == 403 and time.monotonic() < deadline, answer.text
            await asyncio.sleep(0.5)
    browser.driver.get(f"{system.web_url}/candidates/{candidate_id}")
    page = _text(browser)
    assert "F10.20" in page and "substance use disorder" in page
    assert not browser.driver.find_elements(By.ID, "part2-notice")
    assert "in effect" in page
    _shot(browser, "candidate-part2-consented")


async def test_a_toc_user_is_refused_a_sud_ens_candidate_by_url(system: System, browser: Browser) -> None:
    mrn = f"PS{_unique()}"
    await _send(system, _sud_ens_feed(dt.datetime.now(PT), mrn, f"7{_unique()}A"))
    candidate_id, _ = await _candidate_of(system, mrn, "SUD-ENS")
    _open(browser, system, "toc", candidate_id)
    page = _text(browser)
    assert "Not allowed" in page and "HTTP 403" in page and "F11" not in page
    _shot(browser, "candidate-forbidden")
    _open(browser, system, "sud", candidate_id)  # the SUD-ENS team, a Part 2 program: everything
    page = _text(browser)
    assert "SUD-ENS" in page and "F11.20" in page and "3 SUD-related ED visits in 12 months" in page
    _shot(browser, "candidate-sud-ens")
