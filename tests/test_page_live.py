"""The page's Live mode in headless Chromium: the fake microphone plays a real clip, streamed as it plays.

A browser of its own (Chromium plays the microphone's file once, from the
first time a page opens it), on the session's server: the page connects to
``/v1/realtime`` on the HTTP port with the key as its subprotocol, streams
16 kHz frames while the clip plays, shows final text and the revisable tail
apart, and on Stop commits and waits for the last item. The final text shown
is scored against the clip's reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from tests.browser import console_log, start_chromium
from tests.harness import ServerProcess, wait_until, wer
from tests.test_page import RECORDED_CLIP, clip, finished, one_word, severe, text

from .conftest import KEY

LEAD_S, TAIL_S = 0.5, 4.0


@pytest.fixture(scope="module")
def live_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    recorded = clip(RECORDED_CLIP)
    samples, rate = sf.read(recorded.path, dtype="float32")
    padded = np.concatenate([np.zeros(int(LEAD_S * rate), "float32"), samples,
                             np.zeros(int(TAIL_S * rate), "float32")])
    microphone: Path = tmp_path_factory.mktemp("live-microphone") / "microphone.wav"
    sf.write(microphone, padded, rate, subtype="PCM_16")
    driver = start_chromium(microphone)
    try:
        yield driver
    finally:
        driver.quit()


def test_live_mode_shows_final_text_while_the_clip_plays(live_browser: webdriver.Chrome,
                                                         server: ServerProcess) -> None:
    page = live_browser
    recorded = clip(RECORDED_CLIP)
    page.get(f"http://127.0.0.1:{server.port}/")
    console_log(page)
    page.find_element(By.ID, "api-key").send_keys(KEY)
    Select(page.find_element(By.ID, "language")).select_by_value("en")
    page.find_element(By.ID, "live").click()
    # The server's VAD ends the turn in the silence after the clip: the item completes while live.
    wait_until(lambda: page.find_element(By.TAG_NAME, "body").get_attribute("data-live-items"),
               LEAD_S + recorded.duration + 30, "the page to show a completed live item")
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "live"
    page.find_element(By.ID, "live").click()
    finished(page, "done")
    shown = text(page, "live-final")
    assert wer([recorded.text], [shown], "en") <= 2 * one_word(recorded.text), shown
    assert text(page, "live-tentative") == ""  # nothing left unconfirmed once the item completed
    assert severe(console_log(page)) == []
