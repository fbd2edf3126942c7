"""The ops pages in a real browser (issue 13, page 5): feeds, the message browser, a message
segment by segment with its ACK, re-running a rejected message after its sender's setting
is fixed, re-sending a failed notification; a care-team user refused; bad query input
answered with a 4xx page, never a 500.

Most of it runs on the session's system (its open listener): a good message built here and
a malformed public sample (../shared/samples/malformed/006, PID-8 "X", which the listener
answers AE). An open listener rejects nobody for its MSH-4, so the re-run after a fixed
sender setting needs a listener with a senders file: `own_listener` starts one (same
database and broker) and a web app reading through it; both use the demo user name
``ops``, so the session's enrollment and notifier APIs know the acting user too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from services.auth import hash_password
from tests.adt_builder import adt
from tests.browser.conftest import Browser, System, WebAppFactory, serving
from tests.browser.test_candidate import PT, _candidate_of, _send, _toc_feed, _unique
from tests.e2e.up_process import quiet_port
from wpc.tools.send import MllpClient

pytestmark = pytest.mark.timeout(240)

MALFORMED = Path(__file__).resolve().parents[2] / ".." / "shared" / "samples" / "malformed" / "006_santedb_A01.hl7"
MALFORMED_FACILITY = "TEST"  # its MSH-4


def _text(browser: Browser) -> str:
    return str(browser.driver.find_element(By.TAG_NAME, "body").text)


def _shot(browser: Browser, name: str, width: int = 1280) -> None:
    """The whole page at ``width`` (the window as tall as the page for the shot)."""
    d = browser.driver
    d.set_window_size(width, 800)
    height = int(d.execute_script("return document.documentElement.scrollHeight"))
    d.set_window_size(width, max(800, min(height + 150, 4000)))  # the window's frame not in the page
    browser.shot(name)
    d.set_window_size(1280, 800)


def _status(browser: Browser, path: str, method: str = "GET") -> tuple[int, str]:
    """Status and body of ``path`` fetched from the signed-in page (its CSRF token on a POST)."""
    result: Any = browser.driver.execute_async_script(
        """const [path, method, done] = arguments;
        const init = {method: method, credentials: 'same-origin', redirect: 'manual', headers: {'Accept': 'text/html'}};
        if (method === 'POST') {
          const token = document.querySelector('input[name=csrf_token]');
          init.body = new URLSearchParams({csrf_token: token ? token.value : ''});
        }
        fetch(path, init).then(r => r.text().then(t => done([r.status, t])));""", path, method)
    return int(result[0]), str(result[1])


def _sign_in(browser: Browser, base: str, user: str) -> None:
    browser.sign_in(base, user)
    browser.wait_for(lambda drv: "/signin" not in drv.current_url, f"{user} not signed in")


def _rows(browser: Browser) -> dict[str, str]:
    """The facilities table: MSH-4 -> the row's text."""
    return {r.find_element(By.TAG_NAME, "th").text: r.text
            for r in browser.driver.find_elements(By.CSS_SELECTOR, "#facilities tbody tr")}


def _field(browser: Browser, table: str, field: str) -> list[str]:
    """The cells of the row of ``field`` (e.g. PID-8) in the first segment table whose
    caption contains ``table``."""
    row = browser.driver.find_element(
        By.XPATH, f"//table[contains(caption, '{table}')]//tr[td[1] = '{field}']")
    return [str(c.text) for c in row.find_elements(By.TAG_NAME, "td")]


@dataclass(frozen=True)
class Traffic:
    facility: str  # of the good message
    control_id: str
    good_ack: bytes
    bad_ack: bytes


@pytest.fixture(scope="module")
async def traffic(system: System) -> Traffic:
    facility, control_id = f"OPS{_unique()[-5:]}", f"G{_unique()}"
    client = await MllpClient.connect("127.0.0.1", system.mllp_port)
    try:
        good = await client.send(adt("A01", facility=facility, at=dt.datetime.now(PT), control_id=control_id),
                                 timeout=15)
        bad = await client.send(MALFORMED.read_bytes(), timeout=15)
    finally:
        await client.close()
    return Traffic(facility, control_id, good, bad)


async def test_ops_see_feeds_find_and_open_messages(system: System, browser: Browser, traffic: Traffic) -> None:
    assert b"MSA|AA" in traffic.good_ack and b"MSA|AE" in traffic.bad_ack, (traffic.good_ack, traffic.bad_ack)
    d = browser.driver
    _sign_in(browser, system.web_url, "ops")
    d.get(f"{system.web_url}/feeds")
    rows = _rows(browser)
    assert traffic.facility in rows and MALFORMED_FACILITY in rows, rows
    # Facility, last message, AA, AE, AR: one accepted, one error.
    assert " 1 0 0 " in f" {rows[traffic.facility]} "
    assert " 0 1 0 " in f" {rows[MALFORMED_FACILITY]} "
    assert "Consumers" in _text(browser) and "Failed notifications" in _text(browser)
    _shot(browser, "feeds")
    _shot(browser, "feeds-768", 768)

    # The message browser: the good one by its control id, the malformed one by its facility and ACK.
    d.find_element(By.LINK_TEXT, "Search messages").click()
    browser.wait_for(lambda drv: drv.current_url.endswith("/messages"), "no message browser")
    d.find_element(By.ID, "m-control").send_keys(traffic.control_id, Keys.ENTER)  # the form by keyboard
    browser.wait_for(lambda drv: f"control_id={traffic.control_id}" in drv.current_url, "search not sent")
    found = browser.wait_for(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#found tbody tr"), "no rows found")
    assert len(found) == 1 and traffic.facility in found[0].text and "AA" in found[0].text
    d.get(f"{system.web_url}/messages")
    d.find_element(By.ID, "m-facility").send_keys(MALFORMED_FACILITY)
    Select(d.find_element(By.ID, "m-ack")).select_by_value("AE")
    d.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    browser.wait_for(lambda drv: "ack=AE" in drv.current_url, "search not sent")
    found = browser.wait_for(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#found tbody tr"), "no rows found")
    assert len(found) == 1 and "AE" in found[0].text
    _shot(browser, "messages-search")
    _shot(browser, "messages-search-768", 768)

    # One message: segments with field names, the findings, the ACK we sent.
    found[0].find_element(By.PARTIAL_LINK_TEXT, "Open").send_keys(Keys.ENTER)  # by keyboard
    browser.wait_for(lambda drv: "Segments" in _text(browser), "message not shown")
    assert d.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "Messages"
    _shot(browser, "message-rejected")
    _shot(browser, "message-rejected-768", 768)
    body = _text(browser)
    assert "PV1 segment is missing for a visit event" in body  # why it was refused
    # Fields by name: the sample's MSH-4 and PID-8, the ACK's MSA-1.
    assert _field(browser, "segment", "MSH-4")[1:] == ["Sending facility", "HD", MALFORMED_FACILITY]
    assert _field(browser, "segment", "PID-8")[1:] == ["Sex", "IS", "X"]  # v2.3.1 names it so
    assert "The ACK we sent" in body
    assert _field(browser, "of the ACK", "MSA-1")[1:] == ["Acknowledgment code", "ID", "AE"]
    assert "Re-run this message" in body  # rejected: may be re-run (it would fail again: the input is wrong)

    # An empty search says what to do next.
    d.get(f"{system.web_url}/messages?facility=NOSUCHFACILITY")
    assert "No message matches" in _text(browser)
    _shot(browser, "messages-empty")


async def test_bad_query_input_gets_4xx_pages(system: System, browser: Browser, traffic: Traffic) -> None:
    _sign_in(browser, system.web_url, "ops")
    browser.driver.get(f"{system.web_url}/feeds")
    unknown = uuid.uuid4()
    expected = {
        "/messages?since=2026-13-45T99:00": 400, "/messages?until=yesterday": 400, "/messages?ack=XX": 400,
        "/messages?event=A1%25": 400, "/messages?before=not-an-id": 400, f"/messages?facility={'F' * 300}": 400,
        "/messages/not-an-id": 400, f"/messages/{unknown}": 404, f"/messages/{unknown}/reprocess": 404,
        "/messages/not-an-id/reprocess": 400, "/feeds?resent=not-an-id": 400,
        f"/messages/{unknown}?rerun=<b>x</b>": 400,
    }
    answers = {path: _status(browser, path) for path in expected}
    assert {p: s for p, (s, _) in answers.items()} == expected
    for path, (_, page) in answers.items():  # an error page, or the search form naming the value
        assert ("HTTP 4" in page or 'id="search-problem"' in page) and "Something went wrong" not in page, path
    posts = {f"/messages/{unknown}/reprocess": 404, f"/feeds/deliveries/{unknown}/resend": 409,
             "/feeds/deliveries/not-an-id/resend": 400}
    assert {p: _status(browser, p, "POST")[0] for p in posts} == posts
    browser.driver.get(f"{system.web_url}/messages?since=2026-13-45T99:00&facility=X")
    problem = browser.driver.find_element(By.ID, "search-problem").text
    assert "From: not a date and time" in problem
    assert browser.driver.find_element(By.ID, "m-facility").get_attribute("value") == "X"  # the form kept
    _shot(browser, "messages-bad-date")


async def test_a_care_team_user_gets_the_403_page(system: System, browser: Browser) -> None:
    _sign_in(browser, system.web_url, "toc")
    d = browser.driver
    assert "Feeds" not in [a.text for a in d.find_elements(By.CSS_SELECTOR, "nav a")]
    for path in ("/feeds", "/messages", f"/messages/{uuid.uuid4()}"):
        d.get(f"{system.web_url}{path}")
        assert "Not allowed" in _text(browser) and "HTTP 403" in _text(browser), path
    _shot(browser, "feeds-forbidden")


async def test_a_failed_notification_is_re_sent(system: System, browser: Browser) -> None:
    """The demo inbox takes every delivery, so no delivery of the session's system fails by
    itself: a real delivery (of a TOC candidate made here) is marked failed in the
    database, as the dispatcher does after its last attempt; the page re-sends it."""
    mrn = f"RS{_unique()}"
    await _send(system, _toc_feed(dt.datetime.now(PT), mrn, f"9{_unique()}A"))
    _, person_id = await _candidate_of(system, mrn, "TOC")
    dsn = system.up.env["WPC_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        delivery_id = None
        deadline = time.monotonic() + 90
        while delivery_id is None:
            delivery_id = await conn.fetchval(
                "SELECT d.id FROM delivery d JOIN notice n ON n.id = ANY(d.notice_ids) "
                "WHERE n.person_id = $1 AND d.status IN ('sent', 'delivered') LIMIT 1", uuid.UUID(person_id))
            assert delivery_id is not None or time.monotonic() < deadline, "no delivery for the candidate"
            await asyncio.sleep(0.5)
        await conn.execute("UPDATE delivery SET status = 'failed', last_error = 'HTTP 503 from the receiver' "
                           "WHERE id = $1", delivery_id)

        _sign_in(browser, system.web_url, "ops")
        d = browser.driver
        d.get(f"{system.web_url}/feeds#failures")
        row = d.find_element(By.CSS_SELECTOR, f"tr[data-delivery='{delivery_id}']")
        assert "HTTP 503 from the receiver" in row.text
        _shot(browser, "feeds-failure")
        row.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        browser.wait_for(lambda drv: "queued to be sent again" in _text(browser), "no re-send notice")
        _shot(browser, "feeds-resent")
        status = None
        deadline = time.monotonic() + 60
        while status not in ("sent", "delivered"):
            status = await conn.fetchval("SELECT status FROM delivery WHERE id = $1", delivery_id)
            assert status != "failed" and time.monotonic() < deadline, f"re-sent delivery is {status}"
            await asyncio.sleep(0.3)
        audit = await conn.fetchval("SELECT count(*) FROM audit WHERE action = 'resend' AND detail = $1 "
                                    "AND actor = 'ops via webapp'", f"delivery={delivery_id}")
        assert audit == 1
    finally:
        await conn.close()
    d.get(f"{system.web_url}/feeds")
    assert not d.find_elements(By.CSS_SELECTOR, f"tr[data-delivery='{delivery_id}']")


SENDERS = "senders:\n  - name: county\n    facilities: [NORTH]\n    validation: \"off\"\n"


@dataclass(frozen=True)
class OwnListener:
    url: str
    mllp_port: int
    senders: Path
    users: Path


@pytest.fixture
def own_listener(system: System, tmp_path: Path) -> Iterator[OwnListener]:
    """A listener (`wpc listener`) on the session's database and broker with a senders file
    registering facility NORTH only; its users file has the demo ops user and the web
    app's principal (the session's web-app token)."""
    senders = tmp_path / "senders.yaml"
    senders.write_text(SENDERS)
    users = tmp_path / "ops-users.yaml"
    users.write_text(
        f"- {{name: ops, password_scrypt: '{hash_password('demo')}', roles: [ops]}}\n"
        f"- {{name: webapp, token_sha256: {hashlib.sha256(system.api_token.encode()).hexdigest()}, "
        "roles: [webapp]}\n")
    http_port, mllp_port = quiet_port(), quiet_port()
    env = system.up.env
    log = tmp_path / "listener.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(  # stopped below
            [sys.executable, "-m", "wpc.cli", "listener"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "WPC_DATABASE_URL": env["WPC_DATABASE_URL"],
                 "WPC_KAFKA_BOOTSTRAP_SERVERS": env["WPC_KAFKA_BOOTSTRAP_SERVERS"],
                 "WPC_SENDERS_FILE": str(senders), "WPC_USERS_FILE": str(users),
                 "WPC_LISTENER_HTTP_PORT": str(http_port), "WPC_MLLP_PORT": str(mllp_port),
                 "WPC_HTTP_HOST": "127.0.0.1", "WPC_MLLP_HOST": "127.0.0.1", "WPC_LOG_JSON": "false",
                 "WPC_RELAY_POLL_INTERVAL_S": "0.05"})
    try:
        serving(f"http://127.0.0.1:{http_port}", proc, log)
        yield OwnListener(f"http://127.0.0.1:{http_port}", mllp_port, senders, users)
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_rejected_message_is_re_run_after_the_fix(
    system: System, browser: Browser, web_app: WebAppFactory, own_listener: OwnListener
) -> None:
    web = web_app(WPC_USERS_FILE=str(own_listener.users), WPC_WEB_LISTENER_URL=own_listener.url)
    stamp = _unique()
    now = dt.datetime.now(PT)
    client = await MllpClient.connect("127.0.0.1", own_listener.mllp_port)
    try:
        good = await client.send(adt("A01", facility="NORTH", at=now, control_id=f"N{stamp}"), timeout=15)
        bad = await client.send(adt("A01", facility="SOUTH", at=now, control_id=f"S{stamp}"), timeout=15)
    finally:
        await client.close()
    assert b"MSA|AA" in good and b"MSA|AR" in bad

    d = browser.driver
    _sign_in(browser, web, "ops")
    d.get(f"{web}/feeds")
    rows = _rows(browser)
    assert " 0 0 1 " in f" {rows['SOUTH']} ", rows  # AA AE AR
    d.find_element(By.CSS_SELECTOR, "#facilities a[href*='facility=SOUTH'][href*='ack=AR']").click()
    browser.wait_for(lambda drv: "ack=AR" in drv.current_url, "rejected messages not listed")
    d.find_element(By.PARTIAL_LINK_TEXT, "Open").click()
    browser.wait_for(lambda drv: "Segments" in _text(browser), "message not shown")
    assert "not registered" in _text(browser)

    own_listener.senders.write_text(SENDERS.replace("[NORTH]", "[NORTH, SOUTH]"))  # ops fix the setting
    d.find_element(By.PARTIAL_LINK_TEXT, "Re-run this message").click()
    browser.wait_for(lambda drv: "Re-run this rejected message?" in _text(browser), "no confirmation")
    _shot(browser, "message-rerun-confirm")
    d.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
    browser.wait_for(lambda drv: "Re-run done: AA" in _text(browser), "re-run not accepted")
    assert "Re-run this message" not in _text(browser)  # once per message
    _shot(browser, "message-rerun-done")
    d.find_element(By.LINK_TEXT, "this message").click()
    browser.wait_for(lambda drv: "Normalized event" in _text(browser), "accepted message not shown")
    body = _text(browser)
    assert "not sent: built by the re-run" in body and '"sending_facility": "SOUTH"' in body
    _shot(browser, "message-accepted-on-rerun")
    # A second re-run of the same message, posted by hand: refused with the reason, not a 500.
    original = d.find_element(By.LINK_TEXT, "the rejected message").get_attribute("href")
    assert original is not None
    status, page = _status(browser, original.split(web, 1)[1] + "/reprocess", "POST")
    assert status == 409 and "HTTP 409" in page
