"""The dashboard in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium): log in with the token, set a weight with a click and see the gateway
apply it, roll everything back through the in-page confirmation, data shown as text."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_helpers import CONFIG, TOKEN, api, percent, wait_until
from gw_helpers import need

from gateway.control.dashboard import CSP

Replicas = Callable[..., list[Any]]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    need(
        shutil.which("chromium") is not None, "chromium is not installed (apt-get install chromium)"
    )
    need(
        shutil.which("chromedriver") is not None, "chromedriver is not installed (chromium-driver)"
    )
    need(importlib.util.find_spec("selenium") is not None, "selenium is not installed (dev extras)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,900", f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "")
    driver = webdriver.Chrome(options=opts, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, check: Callable[[], Any], timeout: float = 10) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda _d: check())


def _css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def _all(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def test_page_served_without_secret_with_strict_csp(replicas: Replicas) -> None:
    (gw,) = replicas(1, CONFIG)
    with httpx.Client(base_url=gw.admin_url, trust_env=False) as c:
        r = c.get("/dashboard")
        assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
        assert TOKEN not in r.text and '<script src="/dashboard.js"' in r.text
        js = c.get("/dashboard.js").text
        assert "innerHTML" not in js and "Authorization" in js
        assert c.get("/api/guard").status_code == 401
        g = c.get("/api/guard", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert g["enabled"] and g["routes"]["alpha"]["state"] == "idle"


def test_set_weight_by_click_applied_and_rollback_all_after_confirmation(
    replicas: Replicas, browser: Any, tmp_path: Path
) -> None:
    (gw,) = replicas(1, CONFIG)
    hostile = '<img src=x id=pwned onerror="document.title=1">'
    with api(gw.admin_url) as c:  # an audit reason with markup: it must be shown as text
        c.put("/api/routes/beta/percent", json={"percent": 5, "reason": hostile}).raise_for_status()

    browser.get(gw.admin_url + "/dashboard")
    _css(browser, "#token").send_keys(TOKEN)
    _css(browser, "#login-button").click()
    _wait(browser, lambda: _all(browser, 'tr[data-route="alpha"] input.pct'))
    assert "10 %" in _css(browser, 'tr[data-route="alpha"] td.percent').text

    pct = _css(browser, 'tr[data-route="alpha"] input.pct')
    pct.clear()
    pct.send_keys("37.5")
    _css(browser, 'tr[data-route="alpha"] input.reason').send_keys("browser canary")
    _css(browser, 'tr[data-route="alpha"] button.set').click()
    wait_until(lambda: percent(gw.admin_url, "alpha") == 37.5, timeout=5)
    _wait(browser, lambda: "37.5 %" in _css(browser, 'tr[data-route="alpha"] td.percent').text)
    with api(gw.admin_url) as c:
        entry = c.get("/api/audit", params={"route": "alpha", "limit": 1}).json()["entries"][0]
        assert (entry["source"], entry["to_percent"], entry["reason"]) == (
            "dashboard", 37.5, "browser canary")  # fmt: skip
    assert 'gateway_route_new_percent{route="alpha"} 37.5' in gw.metrics()

    _wait(browser, lambda: hostile in _css(browser, "#audit").text)
    assert not _all(browser, "#pwned") and browser.title == "chat-gateway control"

    _css(browser, "#rollback-all").click()
    _wait(browser, lambda: _css(browser, "#confirm-box").is_displayed())
    assert percent(gw.admin_url, "alpha") == 37.5  # nothing happens before the confirmation
    _css(browser, "#confirm-rollback").click()
    wait_until(lambda: percent(gw.admin_url, "alpha") == 0 == percent(gw.admin_url, "beta"))
    _wait(browser, lambda: "0 %" in _css(browser, 'tr[data-route="alpha"] td.percent').text)
    _wait(browser, lambda: "rollback" in _css(browser, "#audit li").text)

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 1000
    logs = browser.get_log("browser")
    severe = [e for e in logs if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
    assert not severe, severe  # no CSP violation, no script error


def test_shadow_match_figures_of_a_mirrored_route_are_shown(
    replicas: Replicas, browser: Any
) -> None:
    import copy

    import httpx

    config = copy.deepcopy(CONFIG)
    config["routes"][0]["shadow"] = {"percent": 100}  # alpha: every GET mirrored
    (gw,) = replicas(1, config)
    for _ in range(3):  # one side answers, the other side gets the copy and is compared
        httpx.get(gw.url + "/alpha/x", timeout=5, trust_env=False)
    browser.get(gw.admin_url + "/dashboard")
    _css(browser, "#token").send_keys(TOKEN)
    _css(browser, "#login-button").click()
    _wait(browser, lambda: _all(browser, '#shadow tr[data-route="alpha"]'))
    row = '#shadow tr[data-route="alpha"]'
    assert _css(browser, row + " td.mirrored").text == "100 %"

    def compared() -> int:
        return sum(int(_css(browser, f"{row} td.{k}").text) for k in ("match", "mismatch", "error"))

    _wait(browser, lambda: compared() == 3)
    with api(gw.admin_url) as c:  # the page shows what the API says
        counts = c.get("/api/shadow").json()["routes"]["alpha"]["counts"]
    assert sum(counts.get(k, 0) for k in ("match", "mismatch", "error")) == 3
