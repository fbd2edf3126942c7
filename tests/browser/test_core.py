"""The web app's core in a real browser: sign-in and sign-out, a wrong password, a form
without its CSRF token, the idle time-out, the access rule of the worklist URL, and a new
candidate appearing on an open worklist without a reload (Server-Sent Events)."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.adt_builder import adt
from tests.browser.conftest import Browser, System, WebAppFactory
from wpc.tools.send import MllpClient

PT = dt.timezone(dt.timedelta(hours=-8))


def _text(browser: Browser) -> str:
    return str(browser.driver.find_element(By.TAG_NAME, "body").text)


def test_sign_in_and_sign_out(system: System, browser: Browser) -> None:
    d = browser.driver
    d.delete_all_cookies()
    d.get(f"{system.web_url}/worklist?program=TOC")
    assert "/signin" in d.current_url  # not signed in: sent to sign-in, coming back after
    browser.shot("signin")
    browser.sign_in(system.web_url, "toc")
    browser.wait_for(lambda drv: "/worklist?program=TOC" in drv.current_url, "not taken to the TOC worklist")
    assert "TOC worklist" in _text(browser) and "Signed in as toc" in _text(browser)
    assert "ISR worklist" not in _text(browser)  # the bar shows only the user's programs
    browser.shot("worklist-empty")
    cookie = d.get_cookie("wpc_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    d.find_element(By.CSS_SELECTOR, "form.signout button").click()
    browser.wait_for(lambda drv: "/signin" in drv.current_url, "not signed out")
    assert "You are signed out." in _text(browser)
    d.get(f"{system.web_url}/worklist?program=TOC")
    assert "/signin" in d.current_url


def test_a_wrong_password_is_refused(system: System, browser: Browser) -> None:
    browser.sign_in(system.web_url, "toc", "not-the-password")
    # The answer comes back to the same URL: wait for the refusal itself, not for a new URL.
    error = browser.wait_for(lambda drv: drv.find_element(By.ID, "signin-error"), "no refusal shown")
    assert "do not match" in error.text
    browser.shot("signin-refused")
    browser.driver.get(f"{system.web_url}/worklist?program=TOC")
    assert "/signin" in browser.driver.current_url


def test_a_form_without_its_csrf_token_is_refused(system: System, browser: Browser) -> None:
    browser.sign_in(system.web_url, "toc")
    browser.wait_for(lambda drv: "/worklist" in drv.current_url, "not signed in")
    # The sign-out form, its token taken away: refused with a page, and still signed in.
    browser.driver.execute_script("document.querySelector('form.signout input[name=csrf_token]').remove()")
    browser.driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    browser.wait_for(lambda drv: "Form expired" in drv.find_element(By.TAG_NAME, "body").text, "no 403 page")
    browser.shot("csrf-refused")
    assert "HTTP 403" in _text(browser)
    browser.driver.get(f"{system.web_url}/worklist?program=TOC")
    assert "TOC worklist" in _text(browser)
    # And from outside the browser: a POST with a wrong token is a 403 page, not a 500.
    answer = httpx.post(f"{system.web_url}/signin", data={"username": "toc", "password": "demo",
                                                           "csrf_token": "forged"})
    assert answer.status_code == 403 and "Form expired" in answer.text


def test_a_program_the_user_may_not_see_is_403(system: System, browser: Browser) -> None:
    browser.sign_in(system.web_url, "toc")
    browser.wait_for(lambda drv: "/worklist" in drv.current_url, "not signed in")
    browser.driver.get(f"{system.web_url}/worklist?program=SUD-ENS")
    assert "Not allowed" in _text(browser) and "HTTP 403" in _text(browser)
    browser.shot("worklist-forbidden")


def test_idle_time_out_signs_out(system: System, browser: Browser, web_app: WebAppFactory) -> None:
    url = web_app(WPC_WEB_IDLE_TIMEOUT_MIN="0.05")  # 3 seconds
    browser.sign_in(url, "toc")
    browser.wait_for(lambda drv: "/worklist" in drv.current_url, "not signed in")
    time.sleep(4)  # longer than the idle time-out (set-up, not a timing assertion)
    browser.driver.get(f"{url}/worklist?program=TOC")
    assert "/signin" in browser.driver.current_url
    assert "signed out after a while without activity" in _text(browser)
    browser.shot("signin-idle")


def _feed(now: dt.datetime, mrn: str) -> list[bytes]:
    """Two past stays, then today's admission with a SUD diagnosis: the third inpatient
    admission in six months with a risk factor, a TOC candidate (programs.md)."""
    messages = []
    for n, days in enumerate((120, 45), start=1):
        admit = now - dt.timedelta(days=days)
        out = admit + dt.timedelta(days=2)
        messages.append(adt("A01", facility="STMARY", mrn=mrn, visit=f"{mrn}V{n}", at=admit, admit=admit))
        messages.append(adt("A03", facility="STMARY", mrn=mrn, visit=f"{mrn}V{n}", at=out, admit=admit,
                            discharge=out))
    admit = now - dt.timedelta(minutes=30)
    messages.append(adt("A01", facility="COUNTYGEN", mrn=mrn, visit=f"{mrn}V3", at=admit, admit=admit,
                        dx=("F10.20", "J44.1")))
    return messages


# The site's time zone (WPC_WEB_TIME_ZONE's default, that of `wpc up`) and a browser zone far
# from it: a time the page takes from the browser's clock would be off by hours.
SITE_ZONE = ZoneInfo("America/Los_Angeles")
BROWSER_ZONE = "Asia/Tokyo"


def _minutes(start: dt.datetime, end: dt.datetime) -> set[str]:
    """Every HH:MM from ``start`` to ``end`` (both included)."""
    shown, at = set(), start.replace(second=0, microsecond=0)
    while at <= end:
        shown.add(at.strftime("%H:%M"))
        at += dt.timedelta(minutes=1)
    return shown


@pytest.mark.timeout(180)
async def test_a_new_candidate_shows_up_live(system: System, browser: Browser) -> None:
    d = browser.driver
    d.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": BROWSER_ZONE})
    try:
        await _new_candidate_shows_up_live(system, browser)
    finally:
        d.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})


async def _new_candidate_shows_up_live(system: System, browser: Browser) -> None:
    browser.sign_in(system.web_url, "toc")
    browser.wait_for(lambda drv: "/worklist" in drv.current_url, "not signed in")
    assert browser.driver.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone") == BROWSER_ZONE
    def rows() -> dict[str, str]:
        """The table's rows by candidate id (the demo county's own candidates are there too)."""
        # Read in one script: the live refresh replaces the table at any moment, and element
        # references taken before it go stale.
        pairs = browser.driver.execute_script(
            "return Array.from(document.querySelectorAll('#worklist-rows tr[data-candidate]'))"
            ".map(r => [r.dataset.candidate, r.innerText]);")
        return {str(candidate): str(text) for candidate, text in pairs}

    before = rows()
    sent_at = dt.datetime.now(SITE_ZONE)
    client = await MllpClient.connect("127.0.0.1", system.mllp_port)
    try:
        for message in _feed(dt.datetime.now(PT), f"LIVE{time.time_ns() % 10**8}"):
            await client.send(message, timeout=15)
    finally:
        await client.close()
    # No reload: the page's stream says "changed" and the table is fetched again.
    browser.wait_for(lambda drv: set(rows()) - set(before),
                     "the new candidate did not appear on the open worklist", timeout_s=90)
    new = [text for candidate, text in rows().items() if candidate not in before]
    assert len(new) == 1, new
    assert "COUNTYGEN" in new[0] and "pending" in new[0]
    assert "pre-discharge visit" in new[0] or "lapses" in new[0]
    # "Updated HH:MM": when the server made the table, in the site's zone as every other time.
    state = browser.driver.find_element(By.ID, "live-state").text
    assert state.startswith("Updated "), state
    assert state.removeprefix("Updated ") in _minutes(sent_at, dt.datetime.now(SITE_ZONE)), state
    browser.shot("worklist-live")
