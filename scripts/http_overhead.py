"""What the OpenAI-compatible HTTP API costs beside the WebSocket path, on one server, the same clips.

One server as shipped (default decoding and batching); one request at a
time, the contestants taking turns clip by clip (bench.alternating_rounds),
so a drift in the host's speed falls on all of them alike:
- WebSocket: the spec's two frames with the WAV, a fresh connection each time;
- HTTP, WAV: a multipart POST of the same WAV (requests, keep-alive);
- HTTP, openai client: the same through the official openai Python client;
- HTTP, MP3: the clip encoded as MP3 beforehand, decoded by the server (PyAV).
Every answer is checked: an error or an empty text stops the run. Writes the
section "The HTTP API against the WebSocket path" of docs/benchmarks.md.

Run: .venv/bin/python scripts/http_overhead.py [--clips 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import openai
import requests
import soundfile as sf

from scripts.bench import OPENMP, Work, alternating_rounds, checked_transcribe
from tests.codecs import encode
from tests.harness import REPO, Clip, ServerProcess, load_manifest

SECTION = "## The HTTP API against the WebSocket path"


def http_contestant(server: ServerProcess, upload: dict[Path, tuple[str, bytes]]) -> Work:
    session = requests.Session()
    url = f"http://127.0.0.1:{server.http_port}/v1/audio/transcriptions"

    def work(clip: Clip) -> str:
        name, data = upload[clip.path]
        reply = session.post(url, files={"file": (name, data)},
                             data={"model": "whisper-1", "language": clip.lang}, timeout=600)
        if reply.status_code != 200 or not reply.json().get("text"):
            raise RuntimeError(f"{clip.path.name}: HTTP {reply.status_code} {reply.text[:200]}")
        return str(reply.json()["text"])
    return work


def openai_contestant(server: ServerProcess) -> Work:
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="-", max_retries=0,
                        timeout=600)

    def work(clip: Clip) -> str:
        text = api.audio.transcriptions.create(model="whisper-1", file=clip.path, language=clip.lang).text
        if not text:
            raise RuntimeError(f"{clip.path.name}: an empty text")
        return text
    return work


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    clips = [c for c in load_manifest() if c.kind == "short"]
    clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    wavs = {c.path: (c.path.name, c.path.read_bytes()) for c in clips}
    mp3s = {c.path: (c.path.with_suffix(".mp3").name, encode(*sf.read(c.path, dtype="float32"), "mp3"))
            for c in clips}
    with ServerProcess(env={"SERVER_API_KEY": "", "ASR_MAX_QUEUE": "256", **OPENMP}) as server:
        contestants: dict[str, Work] = {
            "WebSocket, WAV": lambda clip: checked_transcribe(server.url, clip),
            "HTTP, WAV": http_contestant(server, wavs),
            "HTTP, WAV, openai client": openai_contestant(server),
            "HTTP, MP3": http_contestant(server, mp3s),
        }
        for work in contestants.values():
            work(clips[0])  # warm every path
        latencies = alternating_rounds(contestants, clips, args.rounds)
    reference = latencies["WebSocket, WAV"]
    lines = [SECTION, "",
             f"One server as shipped (beam 5, batching on), {len(clips)} short clips "
             f"({sum(c.duration for c in clips):.0f} s of audio), one request at a time, "
             f"{args.rounds} rounds, "
             "the paths taking turns clip by clip. Ratio: the median over clips of each request's "
             "latency over the WebSocket request's for the same clip and round.", "",
             "| path | p50 latency (s) | mean latency (s) | median ratio to WebSocket |", "|---|---|---|---|"]
    for name, times in latencies.items():
        ratios = [mine / ws for mine, ws in zip(times, reference, strict=True)]
        lines.append(f"| {name} | {statistics.median(times):.3f} | {statistics.fmean(times):.3f} | "
                     f"{statistics.median(ratios):.3f}x |")
    lines += ["", "Where the ratios sit within a few percent of 1, the HTTP path costs nothing that this "
              "host can measure beside the model's own time: the multipart read, PyAV's decode of a "
              "short MP3 and the JSON body are milliseconds against seconds of decoding.",
              "", f"Measured {datetime.date.today()}: `.venv/bin/python scripts/http_overhead.py "
              f"--clips {args.clips} --rounds {args.rounds}`.", ""]
    text = args.out.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    args.out.write_text(text)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
