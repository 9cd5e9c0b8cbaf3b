"""Does anything a request sends stall the event loop? Ping round trips and loop lag under the worst load.

The real server runs as a subprocess. The script first gives it the full
``machine_id`` label cap (requests of silence, two tasks per id: no model
call), then, while one client pings every 50 ms and another scrapes
/metrics every 5 s (Prometheus' default is 15 s), sends a 27-minute recording (the LJSpeech chapter,
seven times) with post-processing on. The LLM is tests/echo_llm.py: it
answers the transcript back lightly edited, the reply that makes the guard
do all its work (no LLM that runs here can correct 27 minutes).

Reported: ping round trips (p50, p99, max), the server's own
``asr_event_loop_lag_seconds`` over the run (p50, p99 as bucket bounds; max
bucket), the scrape sizes and times, and the post-processing time.

    .venv/bin/python scripts/loop_lag.py [--server-dir CHECKOUT] [--ids 2000]

``--server-dir`` runs the server from another checkout (e.g. a worktree of an
older commit, with ``models`` linked in) for the figures before a fix.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import soundfile as sf
from websockets.sync.client import connect

from tests.echo_llm import EchoLlm
from tests.harness import EVAL_DIR, REPO, ServerProcess, transcribe, wav_bytes

LONG = EVAL_DIR / "long" / "en_ljspeech_LJ001-0001_to_0032_concat.wav"
SILENCE = wav_bytes(np.zeros(8_000, dtype=np.float32), 16_000)
PING_EVERY_S = 0.05


def fill_label_cap(url: str, ids: int) -> None:
    def one(i: int) -> None:
        for task in ("transcribe", "translate"):
            reply = transcribe(url, SILENCE, language="en", task=task, machine_id=f"{i:016x}")
            assert "error" not in reply, reply

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(ids)))


def lag_buckets(server: ServerProcess) -> dict[float, float]:
    body = server.http_get("/metrics", server.metrics_port)[1]
    return {float(m[1]): float(m[2]) for m in
            re.finditer(r'^asr_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', body, re.M)}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts[float("inf")]
    for le, cumulative in counts.items():
        if cumulative >= q * total:
            return le
    return float("inf")


class Pinger(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.rtts, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            with connect(self.url, open_timeout=30) as ws:
                ws.send(json.dumps({"type": "ping"}))
                assert json.loads(ws.recv(timeout=30))["type"] == "pong"
            self.rtts.append(time.monotonic() - started)
            self.stop.wait(PING_EVERY_S)


class Scraper(threading.Thread):
    def __init__(self, url: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every_s, self.times, self.sizes, self.stop = url, every_s, [], [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(self.url, timeout=120) as response:  # noqa: S310 (http only)
                self.sizes.append(len(response.read()))
            self.times.append(time.monotonic() - started)
            self.stop.wait(max(0.0, self.every_s - self.times[-1]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-dir", type=Path, default=REPO)
    parser.add_argument("--ids", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7, help="copies of the 232 s chapter")
    parser.add_argument("--scrape-every", type=float, default=5.0,
                        help="seconds from one scrape's start to the next (Prometheus: 15)")
    args = parser.parse_args()

    speech, rate = sf.read(LONG, dtype="float32")
    long_wav = wav_bytes(np.tile(speech, args.repeats), rate)
    command = ["bash", "-c", f"cd {args.server_dir} && exec {sys.executable} -m asr_server"]
    with EchoLlm() as llm:
        env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "POSTPROCESS_URL": llm.url,
               "POSTPROCESS_TIMEOUT_S": "600", "METRICS_MAX_MACHINE_IDS": str(args.ids)}
        with ServerProcess(env=env, command=command) as server:
            started = time.monotonic()
            fill_label_cap(server.url, args.ids)
            print(f"label cap filled: {args.ids} ids x 2 tasks in {time.monotonic() - started:.0f} s")
            before = lag_buckets(server)
            pinger = Pinger(server.url)
            scraper = Scraper(f"http://127.0.0.1:{server.metrics_port}/metrics", args.scrape_every)
            pinger.start()
            scraper.start()
            started = time.monotonic()
            try:
                reply = transcribe(server.url, long_wav, timeout_s=3600, language="en", postprocess=True)
            except Exception:
                print("\n".join(server.lines[-40:]), file=sys.stderr)
                raise
            elapsed = time.monotonic() - started
            pinger.stop.set()
            scraper.stop.set()
            pinger.join(60)
            scraper.join(180)
            after = lag_buckets(server)
    words = len(str(reply.get("text", "")).split())
    minutes = len(speech) * args.repeats / rate / 60
    print(f"request: {minutes:.1f} min of audio, {words} words, {elapsed:.0f} s, "
          f"postprocess_ms {reply.get('postprocess_ms')}, "
          f"postprocess_error {reply.get('postprocess_error')!r}, echo LLM calls {llm.calls}")
    rtts = [r * 1000 for r in pinger.rtts]
    print(f"pings: {len(rtts)}, round trip p50 {percentile(rtts, 50):.1f} ms, "
          f"p99 {percentile(rtts, 99):.1f} ms, max {max(rtts):.1f} ms")
    lag_max = worst_bucket(before, after)
    print(f"event-loop lag (bucket bounds): p50 <= {bucket_quantile(before, after, 0.5) * 1000:g} ms, "
          f"p99 <= {bucket_quantile(before, after, 0.99) * 1000:g} ms, worst bucket <= {lag_max * 1000:g} ms")
    if scraper.times:
        print(f"scrapes: {len(scraper.times)}, {statistics.mean(scraper.sizes) / 1e6:.1f} MB each, "
              f"{statistics.mean(scraper.times):.2f} s mean, {max(scraper.times):.2f} s max")


def worst_bucket(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the highest bucket that got an observation during the run."""
    worst, previous = 0.0, 0.0
    for le in sorted(after):
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative > previous:
            worst = le
        previous = cumulative
    return worst


if __name__ == "__main__":
    main()
