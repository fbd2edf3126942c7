"""The measures page (SVG charts with the 50% target line, a CSV download) and the demo
inbox page (the notices the demo county made, as cards) in a real browser."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By

from tests.browser.conftest import Browser, System


def test_measures_page_draws_charts_and_downloads_csv(system: System, browser: Browser) -> None:
    d = browser.driver
    browser.sign_in(system.web_url, "manager")
    browser.wait_for(lambda drv: "/signin" not in drv.current_url, "not signed in")
    d.get(f"{system.web_url}/measures?months=3")
    sections = d.find_elements(By.CSS_SELECTOR, "section.measures h2")
    assert [s.text for s in sections] == ["TOC", "ISR", "SUD-ENS"]  # ops: every program
    charts = d.find_elements(By.CSS_SELECTOR, "figure.chart-box svg.chart")
    assert len(charts) == 4 + 3 + 2  # TOC 3 shares + readmissions; ISR 2 + 1; SUD-ENS 1 + 1
    # The target line on the PCP-notified chart of each program (its first), on no other chart.
    boxes = d.find_elements(By.CSS_SELECTOR, "figure.chart-box")
    with_target = [b.get_attribute("data-measure") for b in boxes if b.find_elements(By.CSS_SELECTOR, "line.target")]
    assert with_target == ["pcp_notified_share"] * 3
    assert "target 50%" in charts[0].text
    assert len(charts[0].find_elements(By.CSS_SELECTOR, "text.axis")) >= 3  # the months
    browser.shot("measures")
    link = d.find_element(By.ID, "csv")
    assert link.get_attribute("download") is not None
    csv_text = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text().then(t => done([r.status, "
        "r.headers.get('content-type'), t])));", link.get_attribute("href"))
    status, content_type, text = csv_text
    assert status == 200 and content_type.startswith("text/csv")
    lines = text.strip().splitlines()
    assert lines[0] == "program,month,measure,value,enrolled"
    assert {line.split(",")[0] for line in lines[1:]} == {"TOC", "ISR", "SUD-ENS"}
    # A TOC care team member sees TOC only; another program's measures by URL: refused.
    browser.sign_in(system.web_url, "toc")
    d.get(f"{system.web_url}/measures?program=ISR")
    assert "Not allowed" in d.find_element(By.TAG_NAME, "body").text


def test_demo_inbox_page_lists_the_notices(system: System, browser: Browser) -> None:
    d = browser.driver
    browser.sign_in(system.web_url, "ops")
    browser.wait_for(lambda drv: "/signin" not in drv.current_url, "not signed in")
    deadline = time.monotonic() + 150  # the e-mail digest goes a minute after start
    recipients: set[str] = set()
    while time.monotonic() < deadline:
        d.get(f"{system.web_url}/demo-inbox")
        cards = d.find_elements(By.CSS_SELECTOR, "li.card")
        recipients = {c.get_attribute("data-recipient") or "" for c in cards}
        if {"toc-team", "isr-team", "sud-ens-team", "demo-clinic", "eastside-clinic"} <= recipients:
            break
        time.sleep(3)
    assert {"toc-team", "isr-team", "sud-ens-team", "demo-clinic", "eastside-clinic"} <= recipients
    body = d.find_element(By.TAG_NAME, "body").text
    assert "Digest of" in body or "WPC: 3 notifications" in body
    assert "FHIR R4 message" in body and "E-mail" in body
    browser.shot("demo-inbox")
