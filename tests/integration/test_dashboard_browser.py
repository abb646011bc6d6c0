"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver,
installed by .ci/run) driven by Selenium against a real ``keyplane run`` of the paper's network.

The page shows the six nodes, its figures change as the emulated links make key, and an
eavesdropper set from the page raises the Monitoring Element's alarm on the page. Every wait is
on the DOM, bounded by tests/support/deadlines.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.deadlines import DEADLINE_S
from tests.support.processes import ROOT, log_tail, start_keyplane, stop

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
PAPER_NODES = {f"km{i}" for i in range(6)}


def _system_browser() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("browser-run")
    proc = start_keyplane("run", "-t", str(ROOT / "examples" / "paper_poc.yaml"), "-s",
                          str(state), "--ops", "127.0.0.1:0", ready="keyplane running",
                          log=state / "run.log")
    try:
        doc = json.loads((state / "endpoints.json").read_text())
        yield doc["operations"]["dashboard"]
    finally:
        assert stop(proc) == 0, log_tail(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary, driver_path = _system_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(DEADLINE_S)
    try:
        yield driver
    finally:
        driver.quit()


def _texts(driver: WebDriver, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one script run (the page redraws
    its tables on every update, so element handles go stale between two calls)."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
        css))


def _attrs(driver: WebDriver, css: str, attr: str) -> list[str]:
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => e.getAttribute(arguments[1]))", css, attr))


def _click(driver: WebDriver, css: str) -> bool:
    """Click the element the page shows now (a redraw between find and click retries)."""
    driver.find_element(By.CSS_SELECTOR, css).click()
    return True


def _figures(driver: WebDriver) -> tuple[str, tuple[str, ...]]:
    """What changes as the network runs: the clock and each link's rate and store level."""
    return (_texts(driver, "#clock")[0],
            tuple(_texts(driver, "#links tbody td.skr") + _texts(driver, "#links tbody td.store")))


def test_dashboard_shows_the_network_live_and_an_eavesdropper_raises_the_alarm(
        dashboard_url: str, browser: WebDriver) -> None:
    wait = WebDriverWait(browser, DEADLINE_S, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,))
    browser.get(dashboard_url)
    # the six nodes of the paper's network
    wait.until(lambda d: len(_attrs(d, "#nodes li[data-node]", "data-node")) == 6)
    assert set(_attrs(browser, "#nodes li[data-node]", "data-node")) == PAPER_NODES
    assert _texts(browser, "#network") == ["paper-poc"]
    assert len(_attrs(browser, "#links tbody tr[data-link]", "data-link")) == 6
    # live: server-sent events arrive and the figures move
    wait.until(lambda d: _texts(d, "#conn") == ["live"])
    wait.until(lambda d: all(t not in ("–", "") for t in _texts(d, "#links tbody td.skr")))
    first = _figures(browser)
    wait.until(lambda d: (now := _figures(d))[0] != first[0] and now[1] != first[1])
    # the graph and charts were drawn by the bundled ECharts (no CDN)
    assert browser.execute_script(
        "return echarts.getInstanceByDom(document.getElementById('graph'))"
        ".getOption().series[0].data.length") == 6

    # a fault set from the page: a full intercept-resend eavesdropper on km4-km5
    # (before it, no alarm on that link; another link may flag its start on a loaded machine)
    wait.until(lambda d: not _attrs(d, '#alarms li[data-link="km4-km5"]', "data-kind"))
    wait.until(lambda d: _click(d, 'button[data-action="eve"][data-link="km4-km5"]'))
    wait.until(lambda d: "eve km4-km5: now" in _texts(d, "#control-msg")[0])
    kinds = wait.until(lambda d: _attrs(d, '#alarms li[data-link="km4-km5"]', "data-kind"))
    assert set(kinds) & {"qber_high", "eavesdropper_suspected", "key_rate_collapse"}, kinds
    wait.until(lambda d: _texts(d, '#links tr[data-link="km4-km5"] td.alarm') != [""])
    # restored from the page, the alarm clears
    wait.until(lambda d: _click(d, 'button[data-action="restore"][data-link="km4-km5"]'))
    wait.until(lambda d: "restore km4-km5: now" in _texts(d, "#control-msg")[0])
    wait.until(lambda d: not _attrs(d, '#alarms li[data-link="km4-km5"]', "data-kind"))
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
