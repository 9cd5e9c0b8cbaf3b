"""Start-up and stop of the real process: clear refusals, 503 while loading, exit 0 on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.harness import REPO, ServerProcess


def start(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "asr_server"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PORT": "0", **env})


def test_missing_model_is_one_line_naming_make_model() -> None:
    result = start(HOST="127.0.0.1", ASR_MODEL="/nonexistent/large-v9.pt")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "make model" in lines[0] and "/nonexistent/large-v9.pt" in lines[0]


def test_bad_config_is_one_line_per_mistake() -> None:
    result = start(HOST="127.0.0.1", PORT="http", ASR_BEAM_SIZE="-3", ASR_VAD="perhaps")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert {line.split("=")[0].rsplit(" ", 1)[-1] for line in lines} == {"PORT", "ASR_BEAM_SIZE", "ASR_VAD"}


def test_an_open_host_without_a_key_is_refused() -> None:
    result = start(HOST="0.0.0.0", SERVER_API_KEY="", ALLOW_NO_AUTH="")
    assert result.returncode == 2 and "ALLOW_NO_AUTH" in result.stderr


def test_health_is_503_while_loading_then_ok_and_sigterm_exits_0() -> None:
    with ServerProcess(env={"SERVER_API_KEY": ""}, wait_ready=False) as server:
        status, body = server.health()
        assert (status, body) == (503, {"status": "loading"})
        while server.health()[0] != 200:
            assert server.proc is not None and server.proc.poll() is None
            time.sleep(0.1)
        assert server.stop() == 0
