"""Load: thousands of requests from hundreds of concurrent clients, every answer checked.

Starts the real server (greedy decoding, the default queue and batch) on
127.0.0.1, learns the correct transcript of a few short clips one at a time,
then sends ``--requests`` requests from ``--clients`` concurrent clients:
good ones (a short clip), bad ones (wrong key, broken WAV, broken JSON,
unsupported language) and pings. A good request must get its clip's exact
transcript or ``overloaded`` (close 1013); a bad one its exact error and close
code; a ping its pong. Anything else, or no answer, is a lost request.

Measured and written to ``--out`` (docs/load.md): answers by kind, the
overload rate, the server's RSS after warm-up, during and at the end, its
event-loop lag (``asr_event_loop_lag_seconds``) and the ping round trip.

Run: .venv/bin/python scripts/load.py            (10,000 requests, 200 clients; bounded by --max-seconds)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.harness import REPO, Clip, ServerProcess, load_manifest, process_memory_mb, transcribe

KEY = "load-test-key-3f9c"
BAD: dict[str, tuple[dict[str, Any] | str, bytes | None, str, int]] = {
    # name: (frame 1, frame 2, expected error, expected close code)
    "wrong key": ({"type": "transcribe", "language": "en", "api_key": "wrong"}, b"RIFF",
                  "unauthorized", 1008),
    "broken WAV": ({"type": "transcribe", "language": "en", "api_key": KEY}, b"RIFF\x00\x00\x00\x00WAVEjunk",
                   "invalid_audio", 1007),
    "broken JSON": ('{"type": "transcribe", "lang', None, "bad_request", 1008),
    "unsupported language": ({"type": "transcribe", "language": "tlh", "api_key": KEY}, b"RIFF",
                             "unsupported_language", 1008),
}


@dataclass
class Tally:
    answers: Counter[str] = field(default_factory=Counter)  # kind/outcome -> count
    lost: list[str] = field(default_factory=list)  # what went wrong, per lost request
    ping_rtt_s: list[float] = field(default_factory=list)
    good_latency_s: list[float] = field(default_factory=list)
    backoff: bool = False  # the last answer said "try again later"


async def one_request(url: str, index: int, clips: list[tuple[Clip, bytes, str]], tally: Tally) -> None:
    kind = ("good", "good", "good", "good", "bad", "bad", "bad", "ping", "ping", "ping")[index % 10]
    started = time.monotonic()
    try:
        async with connect(url, open_timeout=60, close_timeout=10, max_size=None) as ws:
            if kind == "ping":
                await ws.send(json.dumps({"type": "ping"}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                await ws.wait_closed()
                if reply == {"type": "pong", "status": "ok"} and ws.close_code == 1000:
                    tally.answers["ping: pong"] += 1
                    tally.ping_rtt_s.append(time.monotonic() - started)
                    return
                raise AssertionError(f"ping answered {reply}, close {ws.close_code}")
            if kind == "bad":
                name = list(BAD)[index // 10 % len(BAD)]
                first, second, code, close_code = BAD[name]
                await ws.send(first if isinstance(first, str) else json.dumps(first))
                if second is not None:
                    try:
                        await ws.send(second)
                    except ConnectionClosed:
                        pass  # refused before the audio: that is the point
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                await ws.wait_closed()
                if reply.get("error") == code and ws.close_code == close_code:
                    tally.answers[f"bad ({name}): {code}"] += 1
                    return
                raise AssertionError(f"{name} answered {reply}, close {ws.close_code}")
            clip, wav, expected = clips[index // 10 % len(clips)]
            await ws.send(json.dumps({"type": "transcribe", "language": clip.lang, "api_key": KEY,
                                      "machine_id": f"{index % 50:04x}"}))
            await ws.send(wav)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 900))
            await ws.wait_closed()
            if reply.get("error") == "overloaded" and ws.close_code == 1013:
                tally.answers["good: overloaded"] += 1
                tally.backoff = True
                return
            if reply.get("text") == expected and ws.close_code == 1000:
                tally.answers["good: transcript"] += 1
                tally.good_latency_s.append(time.monotonic() - started)
                return
            raise AssertionError(f"{clip.path.name} answered {reply}, close {ws.close_code}")
    except (AssertionError, OSError, TimeoutError, ConnectionClosed, ValueError) as exc:
        tally.lost.append(f"#{index} {kind}: {type(exc).__name__}: {exc}"[:300])


def loop_lag(metrics_text: str) -> dict[str, float]:
    """Cumulative bucket counts of asr_event_loop_lag_seconds, by upper bound."""
    found = re.findall(r'^asr_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', metrics_text, re.M)
    return {le: float(count) for le, count in found}


async def drive(url: str, total: int, clients: int, clips: list[tuple[Clip, bytes, str]], pid: int,
                max_seconds: float, warmup: int
                ) -> tuple[Tally, list[tuple[float, float]], int, float, float]:
    tally = Tally()
    warm_rss: list[float] = []  # once the first ``warmup`` requests have started
    next_index = 0
    deadline = time.monotonic() + max_seconds
    rss: list[tuple[float, float]] = []
    started = time.monotonic()

    async def client(number: int) -> None:
        nonlocal next_index
        own = Tally()
        while next_index < total and time.monotonic() < deadline:
            index, next_index = next_index, next_index + 1
            if index == warmup:
                warm_rss.append(process_memory_mb(pid))
            own.backoff = False
            await one_request(url, index, clips, own)
            if own.backoff:  # 1013 means try again later: a real client waits a moment
                await asyncio.sleep(0.5 + (index * 7919 + number) % 1000 / 1000)
        tally.answers.update(own.answers)
        tally.lost += own.lost
        tally.ping_rtt_s += own.ping_rtt_s
        tally.good_latency_s += own.good_latency_s

    async def sample_rss() -> None:
        while True:
            rss.append((time.monotonic() - started, process_memory_mb(pid)))
            await asyncio.sleep(2)

    sampler = asyncio.create_task(sample_rss())
    await asyncio.gather(*(client(number) for number in range(clients)))
    sampler.cancel()
    return tally, rss, next_index, time.monotonic() - started, warm_rss[0] if warm_rss else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--warmup", type=int, default=1000,
                        help="RSS 'after warm-up' is read when this many requests have started")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "load.md")
    args = parser.parse_args()

    chosen = sorted((c for c in load_manifest() if c.kind == "short" and c.lang == "en"),
                    key=lambda c: c.duration)[:3]
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "OMP_WAIT_POLICY": "PASSIVE"}
    with ServerProcess(env=env) as server:
        assert server.proc is not None
        pid = server.proc.pid
        clips = []
        for clip in chosen:  # the correct answer: each clip alone, on an idle server
            wav = clip.path.read_bytes()
            clips.append((clip, wav, str(transcribe(server.url, wav, language=clip.lang,
                                                    api_key=KEY)["text"])))
        lag_before = loop_lag(server.http_get("/metrics", server.metrics_port)[1])
        tally, rss, sent, wall, warm_rss = asyncio.run(
            drive(server.url, args.requests, args.clients, clips, pid, args.max_seconds, args.warmup))
        end_rss, peak_rss = process_memory_mb(pid), process_memory_mb(pid, "VmHWM")
        lag_after = loop_lag(server.http_get("/metrics", server.metrics_port)[1])
        healthy = server.health()[0] == 200
    lag = {le: lag_after[le] - lag_before.get(le, 0.0) for le in lag_after}
    lines = report(args, tally, rss, sent, wall, warm_rss, end_rss, peak_rss, lag, healthy, chosen)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if not tally.lost and sent == args.requests and healthy else 1


def report(args: argparse.Namespace, tally: Tally, rss: list[tuple[float, float]], sent: int, wall: float,
           warm_rss: float, end_rss: float, peak_rss: float, lag: dict[str, float], healthy: bool,
           clips: list[Clip]) -> list[str]:
    good = tally.answers["good: transcript"] + tally.answers["good: overloaded"]
    overload_rate = tally.answers["good: overloaded"] / good if good else float("nan")
    ticks = lag.get("+Inf", 0.0)
    over = {le: ticks - lag.get(le, 0.0) for le in ("0.01", "0.05", "0.1", "0.25")}
    later = [mb for t, mb in rss if t >= wall / 2]
    earlier = [mb for t, mb in rss if t < wall / 2]
    rtt = sorted(tally.ping_rtt_s)

    def mean(values: list[float]) -> float:
        return statistics.mean(values) if values else float("nan")

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")

    return [
        "# Load",
        "",
        f"Measured {datetime.date.today()} with `.venv/bin/python scripts/load.py --requests {args.requests} "
        f"--clients {args.clients}` on {os.cpu_count()} CPU cores, no GPU: the real server on 127.0.0.1, "
        "greedy decoding, ASR_MAX_QUEUE 32, ASR_MAX_BATCH 8 (defaults). Good requests send one of "
        f"{', '.join(f'{c.path.name} ({c.duration:.1f} s)' for c in clips)}; 40% good, 30% bad, 30% ping. "
        "A client told `overloaded` waits 0.5 to 1.5 s before its next request, as 1013 asks.",
        "",
        f"- Requests sent: **{sent}** of {args.requests} in {wall:.0f} s ({sent / wall:.1f} requests/s); "
        f"lost (no answer, or a wrong one): **{len(tally.lost)}**; server healthy at the end: **{healthy}**.",
        *(f"- {name}: {count}" for name, count in sorted(tally.answers.items())),
        f"- Overload rate of good requests: **{overload_rate:.1%}** (the rest got their exact transcript, "
        f"median {statistics.median(tally.good_latency_s) if tally.good_latency_s else float('nan'):.1f} s).",
        f"- Server RSS: {warm_rss:.0f} MB after warm-up (the first {args.warmup} requests); "
        f"mean {mean(earlier):.0f} MB over the first half, "
        f"{mean(later):.0f} MB over the second; {end_rss:.0f} MB at the end; peak {peak_rss:.0f} MB.",
        f"- Event-loop lag (timer wake-ups every 0.25 s, {ticks:.0f} during the run): "
        + ", ".join(f"{count:.0f} later than {float(le) * 1000:.0f} ms" for le, count in over.items()) + ".",
        f"- Ping round trip (connect, ping, pong, close) under load: p50 {pct(rtt, 0.5) * 1000:.0f} ms, "
        f"p99 {pct(rtt, 0.99) * 1000:.0f} ms, max {pct(rtt, 1.0) * 1000:.0f} ms.",
        "",
        *(["Lost requests (first 20):", "", *(f"- {line}" for line in tally.lost[:20]), ""]
          if tally.lost else []),
    ]


if __name__ == "__main__":
    sys.exit(main())
