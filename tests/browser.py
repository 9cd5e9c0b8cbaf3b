"""Headless Debian Chromium for the page tests: started offline, with a WAV file as its microphone.

Test code only. ``start_chromium`` fails (never skips) when Chromium or
chromedriver is missing: ``make system-deps`` installs both. Giving Selenium
the driver's path skips Selenium Manager, which would otherwise try to
download a browser and driver from the network. ``save_artifacts`` writes what a
failed page test leaves behind: a screenshot, the DOM and the console log.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

from tests.harness import REPO

ARTIFACTS_DIR = REPO / "test-artifacts"
# Every console entry read so far, per browser session: chromedriver hands each out once, and a
# failure's artifacts should hold those a test already read too.
_CONSOLE: dict[str, list[dict[str, Any]]] = {}


def start_chromium(microphone: Path) -> webdriver.Chrome:
    """Headless Chromium whose microphone plays ``microphone`` once (then silence), permission granted."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("the page tests need Debian's chromium and chromedriver: `make system-deps` "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = browser  # Debian's wrapper script: it adds the flags of /etc/chromium.d
    for flag in ("--headless=new",
                 "--window-size=900,1400",  # the screenshot of a failure shows the result and the error
                 "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
                 "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
                 "--use-fake-device-for-media-stream",
                 # %noloop: without it the file loops, and a recording longer than it repeats words.
                 f"--use-file-for-fake-audio-capture={microphone}%noloop"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console.* for the artifacts
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def console_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console entries since the last call (chromedriver hands each out once)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    _CONSOLE.setdefault(driver.session_id or "", []).extend(entries)
    return entries


def save_artifacts(driver: webdriver.Chrome, test_name: str) -> Path:
    """Screenshot, DOM and console log of the page as the failed test left it; returns their folder."""
    folder = ARTIFACTS_DIR / re.sub(r"[^\w.-]+", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(folder / "screenshot.png"))
        (folder / "page.html").write_text(driver.page_source, encoding="utf-8")
        console_log(driver)
        (folder / "console.log").write_text(
            "".join(json.dumps(entry) + "\n" for entry in _CONSOLE.get(driver.session_id or "", [])))
    except WebDriverException as err:  # a crashed browser still gets its test reported
        (folder / "error.txt").write_text(f"could not capture the page: {err}\n")
    return folder
