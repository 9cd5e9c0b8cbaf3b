"""asr-client end to end: the CLI as a subprocess and the Python API, against the real server on real clips.

The CLI runs as ``python -m asr_client.cli`` with this checkout's ``client/`` first
on PYTHONPATH, so it is the code under test whatever the venv has installed.
Transcripts are scored against the manifest's references with the harness's WER,
subtitles are parsed back into cues, and each failure is checked by its exit code.
Six short clips' worth of decoding in all: the suite's time is nearly spent.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from asr_client import AsrClientError, Result, Segment, transcribe
from asr_client.api import endpoint, metadata, parse_reply
from asr_client.audio import to_wav
from asr_client.errors import EXIT_CODES
from asr_client.machine_id import components, digest
from asr_client.progress import Progress

from tests import harness
from tests.codecs import ENCODINGS, encode
from tests.conftest import KEY, STRICT_MAX_BYTES
from tests.harness import REPO, Clip, ServerProcess

# Short, clean English clips (3-5 s) of three sources; greedy base gets every word of each right.
CLIP_NAMES = ("en/en_pocketsphinx_sense_and_sensibility_0880.wav", "en/en_fasterwhisper_stereo_right.wav",
              "en/en_fasterwhisper_stereo_left.wav", "en/en_pocketsphinx_goforward.wav")
# The bound leaves room for a wrong word per clip (a load-dependent fallback), not for a wrong clip.
MAX_WER = 25.0
_CUE_TIMES = re.compile(r"^(\d\d):(\d\d):(\d\d)([,.])(\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)$")


@pytest.fixture(scope="module")
def clips() -> dict[str, Clip]:
    by_path = {c.path.relative_to(harness.EVAL_DIR).as_posix(): c for c in harness.load_manifest()}
    return {name: by_path[name] for name in CLIP_NAMES}


def cli(*args: str | Path, key: str | None = KEY, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASR_API_KEY", "ASR_SERVER")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), str(REPO)])
    if key is not None:
        env["ASR_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "asr_client.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def server_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}"


def cues(text: str, decimal: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue of an SRT (``,``) or WebVTT (``.``) file, checking its layout."""
    found: list[tuple[float, float, str]] = []
    for block in (b for b in text.strip().split("\n\n") if b):
        lines = block.splitlines()
        if decimal == "," or not _CUE_TIMES.match(lines[0]):
            # SubRip numbers cues from 1; WebVTT's identifiers are optional, numbered here too.
            assert lines[0] == str(len(found) + 1), block
            lines = lines[1:]
        match = _CUE_TIMES.match(lines[0])
        assert match and match[4] == decimal, block
        h1, m1, s1, _, ms1, h2, m2, s2, ms2 = match.groups()
        start = int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000
        end = int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000
        assert len(lines) > 1 and all(line.strip() for line in lines[1:]), block
        found.append((start, end, " ".join(lines[1:])))
    return found


def check_times(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans
    for start, end in spans:
        assert 0 <= start <= end <= duration + 0.5, spans
    assert all(a[1] <= b[0] + 0.01 for a, b in itertools.pairwise(spans)), spans


def test_text_of_several_files_and_a_failure_in_between(server: ServerProcess, clips: dict[str, Clip],
                                                        tmp_path: Path) -> None:
    first, second = (clips[n] for n in CLIP_NAMES[:2])
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio at all\n")
    done = cli(first.path, notes, second.path, "--server", server_url(server), "--language", "en",
               "--progress")
    # The first failure's code; the file after it still ran.
    assert done.returncode == EXIT_CODES["unreadable_audio"], done.stderr
    assert f"{notes}: unreadable_audio" in done.stderr
    texts = dict(re.findall(r"^==> (.+) <==\n(.*)$", done.stdout, re.M))
    assert list(texts) == [str(first.path), str(second.path)], done.stdout
    assert harness.wer([first.text, second.text], list(texts.values()), "en") < MAX_WER
    # The bar, forced on a pipe, writes one line per file, the failed one included.
    assert [line.split("] ")[1].split()[0] for line in done.stderr.splitlines() if "] " in line] == [
        "1/3", "2/3", "3/3"]
    assert KEY not in done.stdout + done.stderr


@pytest.mark.parametrize(("fmt", "decimal"), [("srt", ","), ("vtt", ".")])
def test_subtitles_written_to_the_output_dir(server: ServerProcess, clips: dict[str, Clip], tmp_path: Path,
                                             fmt: str, decimal: str) -> None:
    clip = clips[CLIP_NAMES[2]]
    out = tmp_path / "subs"
    done = cli(clip.path, "--server", server_url(server), "--format", fmt, "--output-dir", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    text = (out / f"{clip.path.stem}.{fmt}").read_text(encoding="utf-8")
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n")
        text = text.removeprefix("WEBVTT\n\n")
    found = cues(text, decimal)
    check_times([(start, end) for start, end, _ in found], clip.duration)
    assert harness.wer([clip.text], [" ".join(t for _, _, t in found)], "en") < MAX_WER


def test_json_with_word_timestamps_from_a_flac(server: ServerProcess, clips: dict[str, Clip],
                                               tmp_path: Path) -> None:
    clip = clips[CLIP_NAMES[1]]
    samples, rate = sf.read(clip.path, dtype="int16")
    flac = tmp_path / "speech.flac"
    # Stereo FLAC: the client must decode it and send the spec's mono WAV.
    sf.write(flac, np.stack([samples, samples], axis=1), rate, format="FLAC")
    done = cli(flac, "--server", server_url(server), "--format", "json", "--word-timestamps")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    result: dict[str, Any] = json.loads(lines[0])
    assert result["file"] == str(flac) and result["language"] == "en"
    assert harness.wer([clip.text], [result["text"]], "en") < MAX_WER
    check_times([(s["start"], s["end"]) for s in result["segments"]], clip.duration)
    for segment in result["segments"]:
        words = segment["words"]
        assert "".join(w["word"] for w in words).strip() == segment["text"].strip()
        check_times([(w["start"], w["end"]) for w in words], clip.duration)
        assert all(0.0 <= w["probability"] <= 1.0 for w in words)


def test_flac_is_sent_as_mono_pcm16_wav_and_wav_as_is(clips: dict[str, Clip], tmp_path: Path) -> None:
    clip = clips[CLIP_NAMES[1]]
    samples, rate = sf.read(clip.path, dtype="int16")
    flac = tmp_path / "speech.flac"
    sf.write(flac, np.stack([samples, samples], axis=1), rate, format="FLAC")
    wav = to_wav(flac.read_bytes())
    info = sf.info(io.BytesIO(wav))
    assert wav[:4] == b"RIFF" and (info.format, info.subtype, info.channels, info.samplerate) == (
        "WAV", "PCM_16", 1, rate)
    assert np.array_equal(sf.read(io.BytesIO(wav), dtype="int16")[0], samples)
    original = clip.path.read_bytes()
    assert to_wav(original) is original
    with pytest.raises(AsrClientError) as raised:
        to_wav(b"\x00" * 1000, "zeros.bin")
    assert raised.value.code == "unreadable_audio" and "zeros.bin" in str(raised.value)


@pytest.mark.parametrize("name", ["m4a", "webm"])
def test_what_libsndfile_cannot_read_is_decoded_by_pyav(clips: dict[str, Clip], name: str) -> None:
    """With the client's ``av`` extra (installed here), m4a and WebM become WAV too."""
    samples, rate = sf.read(clips[CLIP_NAMES[1]].path, dtype="float32")
    wav = to_wav(encode(samples, rate, name), f"speech.{name}")
    decoded, decoded_rate = sf.read(io.BytesIO(wav), dtype="float32")
    codec_rate = ENCODINGS[name][2]
    assert decoded.ndim == 1 and decoded_rate == codec_rate
    assert abs(len(decoded) / decoded_rate - len(samples) / rate) < 0.15  # (AAC's priming, Opus' pre-skip)


def test_wrong_key_is_the_unauthorized_exit_code(server: ServerProcess, clips: dict[str, Clip]) -> None:
    wrong = "not-the-key-5d1e"
    done = cli(clips[CLIP_NAMES[0]].path, "--server", server_url(server), "--key", wrong, key=None)
    assert done.returncode == EXIT_CODES["unauthorized"] == 10, done.stderr
    assert "unauthorized" in done.stderr
    assert wrong not in done.stdout + done.stderr
    # No key at all is the same answer.
    assert cli(clips[CLIP_NAMES[0]].path, "--server", server_url(server), key=None).returncode == 10


def test_unreachable_server_is_connection_failed(clips: dict[str, Clip]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connection is refused
        done = cli(clips[CLIP_NAMES[0]].path, "--server", f"ws://127.0.0.1:{port}")
    assert done.returncode == EXIT_CODES["connection_failed"], done.stderr
    assert "connection_failed" in done.stderr


def test_machine_id_is_this_machines_hash_and_stable() -> None:
    runs = [cli("machine-id", key=None) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    ids = [r.stdout.strip() for r in runs]
    assert re.fullmatch(r"[0-9a-f]{64}", ids[0]) and ids[0] == ids[1]
    assert ids[0] == digest(components())


def test_python_api(server: ServerProcess, clips: dict[str, Clip]) -> None:
    clip = clips[CLIP_NAMES[3]]
    result = transcribe(clip.path.read_bytes(), server=server_url(server), key=KEY, language="en",
                        machine_id="ab12cd", timeout_s=120)
    assert isinstance(result, Result) and result.language == "en"
    assert result.postprocessed_text is None and result.best_text == result.text
    assert all(isinstance(s, Segment) and s.words is None for s in result.segments)
    check_times([(s.start, s.end) for s in result.segments], clip.duration)
    assert harness.wer([clip.text], [result.text], "en") < MAX_WER
    with pytest.raises(AsrClientError) as raised:
        transcribe(clip.path, server=server_url(server), key=KEY, language="xx")
    assert raised.value.code == "unsupported_language" and raised.value.exit_code == 12


def test_too_large_audio_is_the_1009_close(strict_server: ServerProcess) -> None:
    # Silence just over the strict server's MAX_AUDIO_BYTES: refused on its size, never decoded.
    wav = harness.wav_bytes(np.zeros(STRICT_MAX_BYTES // 2 + 1000, dtype=np.float32), 16000)
    with pytest.raises(AsrClientError) as raised:
        transcribe(wav, server=server_url(strict_server), key=KEY, language="en", timeout_s=60)
    assert raised.value.code == "audio_too_large" and raised.value.exit_code == 14


def test_metadata_sends_only_what_was_asked() -> None:
    plain = metadata(key=None, language=None, task="transcribe", word_timestamps=False, prompt=None,
                     postprocess=None, machine_id="ab12")
    # Exactly the spec's fields: a request without the extensions is served as the spec says.
    assert plain == {"type": "transcribe", "language": None, "task": "transcribe", "machine_id": "ab12"}
    full = metadata(key="k", language="bg", task="translate", word_timestamps=True, prompt="Plovdiv",
                    postprocess=False, machine_id="ab12")
    assert full == {**plain, "language": "bg", "task": "translate", "api_key": "k", "postprocess": False,
                    "word_timestamps": True, "prompt": "Plovdiv"}
    assert endpoint("ws://h:8765/") == endpoint("ws://h:8765/ws/transcribe") == "ws://h:8765/ws/transcribe"


@pytest.mark.parametrize(("reply", "code"), [
    ('{"error": "overloaded", "detail": "queue full"}', "overloaded"),
    ('{"error": "quota_exceeded"}', "unknown_error"),
    ('{"text": "hi", "segments": [{"text": "hi", "start": "soon"}]}', "protocol_error"),
    ("[1, 2]", "protocol_error"),
    (b"RIFF", "protocol_error"),
])
def test_replies_that_are_not_results_raise_by_code(reply: str | bytes, code: str) -> None:
    with pytest.raises(AsrClientError) as raised:
        parse_reply(reply)
    assert raised.value.code == code and raised.value.exit_code == EXIT_CODES[code]


def test_readme_lists_every_exit_code() -> None:
    readme = (REPO / "client" / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| `(\w+)`", readme, re.M))
    assert table == {str(n): c for c, n in EXIT_CODES.items() if c != "unknown_error"}
    assert "| 19 | an error code this client does not know" in readme


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_keeps_results_off_its_line() -> None:
    screen = _Terminal()
    bar = Progress(2, stream=screen)
    bar.start("a.wav")
    bar.write("result of a\n", screen)  # stdout and stderr on one terminal
    bar.finish("a.wav")
    bar.start("b.wav")
    bar.finish("b.wav")
    # What the terminal shows: each \r returns to the line start, \x1b[K clears the rest of the line.
    lines = [re.sub(r".*\r", "", line).replace("\x1b[K", "") for line in screen.getvalue().split("\n")]
    assert lines[0] == "result of a"
    assert lines[1].startswith("[" + "#" * 24 + "] 2/2 ") and lines[1].endswith(" b.wav")
    assert lines[2:] == [""]
