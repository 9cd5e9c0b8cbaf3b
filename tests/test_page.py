"""The browser page at ``GET /``: its headers over plain HTTP, then the page itself in headless Chromium.

Chromium's microphone plays a real eval clip (``--use-file-for-fake-audio-capture``);
the page records it, encodes the WAV, speaks the protocol to the real server and
shows the result, which is scored against the manifest's reference.

What Chromium 156 does with the file, measured by cross-correlating the WAV the
page sent with the file: it starts playing when the page opens the microphone,
so the recording begins at the file's start (within that measurement's 50 ms);
at the end it loops, or with ``%noloop`` plays silence. The clip is padded with
silence on both sides so that neither a late start nor a loop (were ``%noloop``
ever ignored) can cut or repeat a word, and the test stops just past the end of
the speech, well before the padding runs out.
"""

from __future__ import annotations

import html.parser
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from asr_server.contract.domain import SUPPORTED_LANGUAGES
from asr_server.transports.page import content_security_policy
from tests.browser import console_log, start_chromium
from tests.harness import REPO, Clip, ServerProcess, load_manifest, normalise, transcribe, wait_until, wer

from .conftest import KEY, exchange

RECORDED_CLIP = "en/en_picovoice_test.wav"  # 5.9 s, LibriSpeech's "Mr. Quilter" sentence, 16 words
FILE_CLIP = "en/en_fasterwhisper_stereo_right.wav"  # 5 s, 5 words (faster-whisper's test audio)
LEAD_S = 0.25  # silence before the speech, in case the capture misses the device's first frames
TAIL_S = 3.0  # silence after; a loop would wrap only after it
STOP_PAST_END_S = 0.2  # the recording stops this far past the clip's end, 2.8 s short of a wrap
PAGE_FILE = REPO / "asr_server" / "static" / "index.html"


def clip(path: str) -> Clip:
    return next(c for c in load_manifest() if c.row["path"] == path)


def one_word(reference: str) -> float:
    """The page's WER bound: one word of the reference, in percent.

    Both clips sent straight from their files come back word for word (greedy
    ``base``, measured: WER 0). The page's audio differs from the file only by
    Chromium's resampling (the 48 kHz capture down to 16 kHz in the page) and
    16-bit requantisation, so one word of slack absorbs a borderline token,
    while a repeated loop, a cut start, a wrong rate in the header or a dropped
    chunk each cost several words.
    """
    return 100.0 / len(normalise(reference, "en").split())


# --- plain HTTP: no browser -------------------------------------------------------------------


def get(server: ServerProcess, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def test_page_is_served_with_its_headers(server: ServerProcess) -> None:
    status, headers, body = get(server, "/")
    assert status == 200
    # The file as it is, but for the two ports its Live mode needs (the HTTP port is where
    # /v1/realtime is; the page's own tells it whether it was reached directly or via a proxy).
    ports = f'data-live-port="{server.http_port}" data-page-port="{server.port}"'
    page = PAGE_FILE.read_text(encoding="utf-8")
    assert body == page.replace('<html lang="en">', f'<html lang="en" {ports}>')
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    live = f"127.0.0.1:{server.http_port}"  # from the request's Host
    assert policy["connect-src"] == f"'self' ws://{live} wss://{live}"
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/=]{44}' blob:", policy["script-src"]), policy
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/=]{44}'", policy["style-src"]), policy
    for alias in ("/index.html", "/?lang=en"):
        assert get(server, alias)[::2] == (200, body), alias
    assert get(server, "/index.htm")[0] == 404
    assert get(server, "/static/index.html")[0] == 404  # the package's files are not a web root


def test_health_and_websocket_beside_the_page(server: ServerProcess) -> None:
    status, headers, body = get(server, "/health")
    assert (status, headers["Content-Type"], json.loads(body)["status"]) == (200, "application/json", "ok")
    assert exchange(server.url, {"type": "ping"}).reply == {"type": "pong", "status": "ok"}


class _Options(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.select: str | None = None
        self.values: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "select":
            self.select = dict(attrs)["id"]
            self.values[self.select or ""] = []
        elif tag == "option" and self.select:
            self.values[self.select].append(dict(attrs)["value"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.select = None


def test_page_offers_the_protocols_languages_and_tasks() -> None:
    parser = _Options()
    parser.feed(PAGE_FILE.read_text(encoding="utf-8"))
    assert parser.values["language"] == ["", *SUPPORTED_LANGUAGES]  # "": detect
    assert parser.values["task"] == ["transcribe", "translate"]


def test_policy_follows_the_pages_inline_code() -> None:
    """The hashes come from the file, so an edited script gets a new one; a page without one is refused."""
    page = "<style>p {{}}</style><script>{}</script>"
    assert content_security_policy(page.format("a()")) != content_security_policy(page.format("b()"))
    assert "'unsafe-inline'" not in content_security_policy(page.format("a()"))
    with pytest.raises(ValueError):
        content_security_policy('<style>p {}</style><script src="/app.js"></script>')


# --- headless Chromium ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded clip between silences, as the 16-bit PCM WAV Chromium plays as its microphone."""
    recorded = clip(RECORDED_CLIP)
    samples, rate = sf.read(recorded.path, dtype="float32")
    padded = np.concatenate([np.zeros(int(LEAD_S * rate), "float32"), samples,
                             np.zeros(int(TAIL_S * rate), "float32")])
    path = tmp_path_factory.mktemp("microphone") / "microphone.wav"
    sf.write(path, padded, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def chromium(microphone: Path) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(microphone)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(chromium: webdriver.Chrome, server: ServerProcess) -> webdriver.Chrome:
    """The page freshly loaded from the server, with nothing remembered from an earlier test."""
    chromium.get(f"http://127.0.0.1:{server.port}/")
    chromium.execute_script("localStorage.clear()")
    chromium.refresh()
    console_log(chromium)  # from here on, the log holds only this test's messages
    return chromium


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def fill(driver: webdriver.Chrome, key: str, language: str) -> None:
    driver.find_element(By.ID, "api-key").send_keys(key)
    Select(driver.find_element(By.ID, "language")).select_by_value(language)


def finished(driver: webdriver.Chrome, wanted: str, timeout_s: float = 60) -> None:
    """Wait until the page says done or error, then insist on ``wanted`` (showing what it said)."""
    def state() -> str | None:
        shown = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        return shown if shown in ("done", "error") else None

    reached = wait_until(state, timeout_s, "the page's data-state to become done or error")
    assert reached == wanted, f"the page ended in {reached}: {text(driver, 'error')!r}"


def severe(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Console errors: a CSP violation, an uncaught exception, a failed load."""
    return [entry for entry in entries if entry["level"] == "SEVERE"]


def segment_times(driver: webdriver.Chrome) -> list[tuple[float, float]]:
    times = []
    for shown in driver.find_elements(By.CSS_SELECTOR, "#segments .time"):
        match = re.fullmatch(r"(\d+\.\d\d) s – (\d+\.\d\d) s", shown.text)
        assert match, shown.text
        times.append((float(match[1]), float(match[2])))
    return times


def sent_directly(server: ServerProcess, sent: Clip, language: str | None) -> str:
    """For a failure's message only: the clip's file straight to the server, to tell a page that broke
    the audio from a model that hears the clip differently."""
    reply = transcribe(server.url, sent.path.read_bytes(), language=language, api_key=KEY)
    return f"sent directly: {reply.get('text')!r}, WER {wer([sent.text], [reply.get('text', '')], 'en'):.1f}"


def test_page_records_the_microphone_and_shows_the_transcript(page: webdriver.Chrome,
                                                              server: ServerProcess) -> None:
    recorded = clip(RECORDED_CLIP)
    fill(page, KEY, "en")
    stop_at = LEAD_S + recorded.duration + STOP_PAST_END_S
    page.find_element(By.ID, "record").click()
    wait_until(lambda: float(page.find_element(By.ID, "duration").get_attribute("data-seconds") or 0)
               >= stop_at, stop_at + 30, f"the page to show {stop_at:.1f} s recorded")
    assert page.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "recording"
    page.find_element(By.ID, "record").click()
    finished(page, "done")

    shown = text(page, "text")
    assert wer([recorded.text], [shown], "en") <= one_word(recorded.text), \
        f"the page showed {shown!r}; {sent_directly(server, recorded, 'en')}"
    assert text(page, "result-language") == "en"
    sent_s = float(text(page, "result-audio").removesuffix(" s"))
    assert stop_at <= sent_s < stop_at + 1.0  # the whole recording went, and little more
    times = segment_times(page)
    assert times and all(0 <= start < end <= sent_s + 0.05 for start, end in times), times
    # The style and the script both ran: their CSP hashes match what was served.
    assert page.execute_script("return getComputedStyle(document.body).maxWidth") == "704px"
    assert severe(console_log(page)) == []


def test_page_transcribes_a_chosen_file(page: webdriver.Chrome, server: ServerProcess) -> None:
    chosen = clip(FILE_CLIP)
    fill(page, KEY, "")  # detect: the page must show what the server found
    page.find_element(By.ID, "file").send_keys(str(chosen.path))
    finished(page, "done")
    shown = text(page, "text")
    assert wer([chosen.text], [shown], "en") <= one_word(chosen.text), \
        f"the page showed {shown!r}; {sent_directly(server, chosen, None)}"
    assert text(page, "result-language") == "en"
    assert abs(float(text(page, "result-audio").removesuffix(" s")) - chosen.duration) < 0.05
    assert segment_times(page)
    assert severe(console_log(page)) == []


def test_page_shows_a_wrong_key_and_keeps_no_key(page: webdriver.Chrome) -> None:
    wrong = "wrong-key-5d0e9b"
    assert page.find_element(By.ID, "api-key").get_attribute("type") == "password"
    fill(page, wrong, "en")
    page.find_element(By.ID, "api-key").send_keys(Keys.ENTER)  # no form submission (CSP would log it)
    page.find_element(By.ID, "file").send_keys(str(clip(FILE_CLIP).path))
    finished(page, "error")
    assert text(page, "error-code") == "unauthorized"
    assert text(page, "error-detail")  # the server's detail, shown beside the code
    assert page.find_element(By.ID, "result").is_displayed() is False
    assert wrong not in page.find_element(By.TAG_NAME, "body").text
    console = console_log(page)
    assert all(wrong not in entry["message"] for entry in console)
    assert severe(console) == []
    assert page.execute_script("return localStorage.length") == 0  # "remember" was not ticked

    page.find_element(By.ID, "remember").click()
    page.refresh()
    assert page.find_element(By.ID, "api-key").get_attribute("value") == wrong
    page.find_element(By.ID, "remember").click()  # unticked: forgotten at once
    assert page.execute_script("return localStorage.length") == 0
