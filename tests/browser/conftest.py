"""The browser tests' running system, shared by every test of the session.

One real `wpc up` (tests/e2e/up_process.py) in demo mode against the test PostgreSQL (a
database of its own, made from the migrated template) and the session's Tansu broker:
listener, enrollment service, notifier, demo inbox and the web app, with the demo
sign-ins (`services.auth.DEMO_PEOPLE`, password ``demo``). Its web app's API token is
fixed here (WPC_WEB_API_TOKEN), so a test may start another web app against the same
APIs (`web_app`), e.g. with a tiny idle time-out.

The browser is Debian's chromium driven by its chromedriver (packages ``chromium`` and
``chromium-driver``; the Makefile installs them), headless, with a fresh profile. Every
test saves a screenshot of each page it visits with `Browser.shot` under
tests/browser/screenshots/ (git-ignored; look at them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from services.auth import hash_password
from tests.conftest import ADMIN_DSN, Broker, _url
from tests.e2e.up_process import UpProcess, quiet_port

_T = TypeVar("_T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).parent / "screenshots"
WAIT_S = 30.0
START_S = 120.0  # a service process to answer /healthz

pytestmark = pytest.mark.browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path):
            item.add_marker(pytest.mark.browser)


@dataclass(frozen=True)
class System:
    up: UpProcess
    web_url: str
    api_token: str

    @property
    def mllp_port(self) -> int:
        return self.up.mllp_port


@pytest.fixture(scope="session")
async def system(template_db: str, broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):  # noqa: ASYNC240 (instant)
        pytest.fail("chromium and chromium-driver are not installed (`make browser` installs them)")
    name = f"wpc_b_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    token = uuid.uuid4().hex
    base = tmp_path_factory.mktemp("browser-system")
    up = UpProcess(base / "data", base, WPC_DATABASE_URL=_url(name).replace("postgresql://", "postgresql+asyncpg://"),
                   WPC_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, WPC_WEB_API_TOKEN=token,
                   WPC_EXPIRY_INTERVAL_S="3600")
    try:
        await up.start()
        yield System(up, f"http://127.0.0.1:{up.env['WPC_WEB_PORT']}", token)
    finally:
        if up.proc is not None:
            up.send(15)
            await up.wait(60)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def web_app(system: System, tmp_path: Path) -> Iterator[WebAppFactory]:
    """Start another web app (`wpc web`) against the system's APIs, with settings of the test's choice."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port = quiet_port()
        # Its own file name: a test's own users file (given as WPC_USERS_FILE, e.g. one a
        # listener of the test also reads) in the same tmp_path is never overwritten.
        users = tmp_path / f"web-users-{port}.yaml"
        hashed = hash_password("demo")
        users.write_text("".join(f"- {{name: {n}, password_scrypt: '{hashed}', roles: [{r}]}}\n"
                                 for n, r in (("toc", "care_team:TOC"), ("sud", "care_team:SUD-ENS"))))
        up = system.up.env
        with (tmp_path / "web.log").open("ab") as log:
            proc = subprocess.Popen(  # stopped below
                [sys.executable, "-m", "wpc.cli", "web"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "WPC_USERS_FILE": str(users), "WPC_WEB_API_TOKEN": system.api_token,
                     "WPC_WEB_PORT": str(port), "WPC_HTTP_HOST": "127.0.0.1", "WPC_LOG_JSON": "false",
                     "WPC_WEB_LISTENER_URL": f"http://127.0.0.1:{up['WPC_LISTENER_HTTP_PORT']}",
                     "WPC_WEB_ENROLLMENT_URL": f"http://127.0.0.1:{up['WPC_ENROLLMENT_HTTP_PORT']}",
                     "WPC_WEB_NOTIFIER_URL": f"http://127.0.0.1:{up['WPC_NOTIFIER_HTTP_PORT']}", **env})
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        serving(url, proc, tmp_path / "web.log")
        return url

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(30)


def serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the process started at ``url`` answers /healthz (its log in the failure).
    A start-up deadline, not a timed assertion: on this shared 2-core machine a Python
    service has been seen to need more than 30 s to start."""
    deadline = time.monotonic() + START_S
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.1)


class WebAppFactory:  # the type of `web_app` (a callable: environment -> base URL)
    def __call__(self, **env: str) -> str: ...


class Browser:
    """A headless Chromium with the page helpers the tests share."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="wpc-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={self.profile}", "--window-size=1280,800"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.implicitly_wait(0)

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def wait_for(self, condition: Callable[[Any], _T], message: str, timeout_s: float = WAIT_S) -> _T:
        """``condition``'s first truthy value, polled until ``timeout_s``."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        # A condition that reads the page can meet the old page's elements while a form's POST
        # and redirect swap the document: chromedriver then says "stale element", "no such
        # element" or "node does not belong to the document". Each is "not yet", not a failure;
        # one that lasts ends the wait with ``message`` at the time-out.
        return WebDriverWait(
            self.driver, timeout_s, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)
        ).until(condition, message)

    def sign_in(self, base: str, name: str, password: str = "demo") -> None:
        """Sign in and wait for the answer: a page off /signin, or the refusal on it. A test
        that navigates at once would otherwise race the form's redirect, which may land
        after its own page and replace it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By

        d = self.driver
        d.delete_all_cookies()
        d.get(f"{base}/signin")
        d.find_element(By.ID, "username").send_keys(name)
        d.find_element(By.ID, "password").send_keys(password)

        def answered(drv: Any) -> bool:
            return "/signin" not in drv.current_url or bool(drv.find_elements(By.ID, "signin-error"))

        d.find_element(By.CSS_SELECTOR, "form button[type=submit].primary").click()
        try:
            self.wait_for(answered, "", timeout_s=WAIT_S / 3)
        except TimeoutException:
            # Once in four full runs on a loaded 2-CPU machine the page sat on /signin for the
            # whole wait and the web app made no call meanwhile (no worklist read followed):
            # most likely a click lost under load. Signing in is idempotent, so submit again;
            # a web app that does not answer fails the second wait all the same.
            d.find_element(By.CSS_SELECTOR, "form button[type=submit].primary").click()
            self.wait_for(answered, f"no answer to {name}'s sign-in")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.quit()


