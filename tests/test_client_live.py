"""``asr-client live`` end to end: a real clip streamed at real-time pace to the real server's /v1/realtime.

The CLI runs as a subprocess (``python -m asr_client.cli live``) with this
checkout's client first on PYTHONPATH, as in test_client_cli.py; what it prints
is the final text, one line per item, scored against the clip's reference.
"""

from __future__ import annotations

from tests import harness
from tests.harness import EVAL_DIR, ServerProcess
from tests.test_client_cli import cli
from tests.test_realtime import JFK_TEXT

JFK = EVAL_DIR / "en" / "en_whisper_jfk.wav"


def test_live_prints_final_text_as_it_comes(server: ServerProcess) -> None:
    done = cli("live", JFK, "--server", f"ws://127.0.0.1:{server.http_port}", "--language", "en")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2, done.stdout  # the speaker's pauses end items: one line each
    assert harness.wer([JFK_TEXT], [" ".join(lines)], "en") <= 25.0, done.stdout


def test_live_with_a_wrong_key_exits_unauthorized(server: ServerProcess) -> None:
    done = cli("live", JFK, "--server", f"ws://127.0.0.1:{server.http_port}", key="wrong-key")
    assert done.returncode == 10, (done.returncode, done.stderr)
    assert "wrong-key" not in done.stderr + done.stdout
