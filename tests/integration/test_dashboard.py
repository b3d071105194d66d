"""The dashboard in a real headless browser (issue 9, §7): Debian's Chromium driven by
Selenium against the real API server (uvicorn) over the real PostgreSQL. Sign in with a
clinic's key, see the campaigns with their funnel chart, find an enrollment's timeline,
see the dead letters; a screenshot of each page is saved under artifacts/."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By

from contracts.campaigns import CampaignSpec
from projections import api_keys, dead_letters
from projections.dead_letters import DeadLetter
from services.application.definitions import compile_campaign
from services.bootstrap import Services, build
from services.entrypoints.api import create_api
from services.settings import Settings
from tests.gallery import CLINIC
from tests.integration.test_api import WELCOME
from tests.timers import fire_due

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


def _browser_installed() -> None:
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        subprocess.run(["bash", str(REPO / "scripts" / "tools.sh")], check=True)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build(settings)
    built.app.apply_clinic(CLINIC)
    yield built
    built.close()


@pytest.fixture
def server(services: Services) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = create_api(services.settings, services.app, services.pool)
    srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    _browser_installed()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def test_the_dashboard_shows_funnels_a_timeline_and_dead_letters(
        services: Services, server: str, browser: webdriver.Chrome) -> None:
    app = services.app
    cid = app.define_campaign(compile_campaign(CampaignSpec.model_validate(WELCOME), CLINIC))
    now = datetime.now(UTC)
    enrolled = [app.enroll("vitoria", cid, f"p{i}", now, f"test:{i}")[0] for i in range(3)]
    assert len(fire_due(services, now + timedelta(minutes=2))) == 3
    services.projector.catch_up()
    with services.pool.connection() as conn, conn.cursor() as cur:
        key = api_keys.create(cur, "vitoria", "analyst", now)
        dead_letters.write(cur, [DeadLetter(
            "test", "drip.appointments.v1", 0, 7, b"p1",
            b'{"clinicid": "vitoria", "type": "appointment.booked"}', (),
            "unknown schema version")])
    ARTIFACTS.mkdir(exist_ok=True)

    browser.get(server + "/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    section = browser.find_element(By.ID, "campaign-api-welcome")
    assert section.find_element(By.CSS_SELECTOR, ".enrolled").text == "3"
    bars = section.find_elements(By.CSS_SELECTOR, "svg rect")
    assert len(bars) == 2 * 4  # two steps × sent, delivered, opened, clicked
    sent = section.find_element(By.CSS_SELECTOR, "td[data-metric='sent']")
    assert sent.text == "3"
    assert float(bars[0].get_attribute("width") or 0) == pytest.approx(520.0)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    browser.find_element(By.NAME, "q").send_keys(str(enrolled[0].id))
    browser.find_element(By.CSS_SELECTOR, "form[action='/find'] button").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tr")
    events = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows[1:]]
    assert events[:3] == ["Enrolled", "StepScheduled", "MessageSent"]
    assert "1/2 (50 %)" in browser.find_element(By.ID, "sequences").text
    browser.save_screenshot(str(ARTIFACTS / "dashboard-enrollment.png"))

    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    table = browser.find_element(By.ID, "dead-letters").text
    assert "unknown schema version" in table and "drip.appointments.v1" in table
    browser.save_screenshot(str(ARTIFACTS / "dashboard-dead-letters.png"))
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
