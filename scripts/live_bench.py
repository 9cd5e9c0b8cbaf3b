"""Live dictation measured: the real server, the official openai client streaming at real-time pace.

Sources: the long recordings of ../shared/eval/ fit for WER (VoxPopuli 69 s,
LJSpeech 233 s), and short eval clips in four languages joined with 2 s
pauses (the language left to detection). For each, the same audio also goes
through the same server's HTTP API in one piece (verbose_json with word
times): the offline result the live one is judged against, and the word end
times the commit lag is measured from. Where speech starts and ends comes
from silero (the file VAD, no padding) on the same audio.

Figures (docs/live.md): end of speech to ``completed`` (p50, p95); commit
lag, a word's audio end to the delta that carries it (p50, p95); the first
delta after an item's speech starts; WER of the live text and of the offline
text against the reference; commit lag with 1..N streams at once; and a file
request's latency alone and beside one live stream.

Run: .venv/bin/python scripts/live_bench.py [--streams 1 2 3 4] [--quick] [--whole-window]
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import soundfile as sf
import soxr
from openai import OpenAI

from asr_server.__main__ import OPENMP_DEFAULTS  # noqa: F401  (sets them unless set)
from asr_server.engine.vad import SpeechDetector, VadOptions
from scripts.bench import cpu_note
from tests.harness import REPO, ServerProcess, load_manifest, normalise, wer
from tests.live_client import RATE, LiveRun, load_24k, stream


@dataclass
class Source:
    name: str
    audio: np.ndarray  # 24 kHz
    reference: str
    language: str  # for normalising; "mixed" sources carry one per clip
    languages: list[str]
    references: list[str]
    pieces: list[np.ndarray]  # what the offline result is made of: the whole, or each clip with its pause


def sources(quick: bool) -> list[Source]:
    clips = load_manifest(for_wer=True)
    longs = [c for c in clips if c.kind == "long"]
    found = []
    for clip in sorted(longs, key=lambda c: c.duration)[: 1 if quick else 2]:
        audio = load_24k(clip.path, 2.0)
        found.append(Source(clip.path.stem, audio, clip.text, clip.lang, [clip.lang], [clip.text], [audio]))
    short = [c for c in clips if c.kind == "short"]
    picked = [c for lang, n in (("en", 3), ("de", 2), ("fr", 2), ("es", 2)) for c in
              [c for c in short if c.lang == lang][:n]]
    pieces = [load_24k(c.path, 2.0) for c in picked]
    found.append(Source("joined_en_de_fr_es", np.concatenate(pieces), "", "mixed",
                        [c.lang for c in picked], [c.text for c in picked], pieces))
    return found


def offline(port: int, audio: np.ndarray) -> dict[str, Any]:
    buffer = io.BytesIO()
    sf.write(buffer, soxr.resample(audio, RATE, 16_000), 16_000, format="WAV", subtype="PCM_16")
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    result = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", buffer.getvalue()),
                                                response_format="verbose_json",
                                                timestamp_granularities=["word", "segment"])
    return result.model_dump()


def offline_pieces(port: int, source: Source) -> dict[str, Any]:
    """The offline result of the source's audio: in one piece, or clip by clip (each its own language
    detected, as a file request would be) with the word times moved to the joined audio's clock."""
    texts, words, offset = [], [], 0.0
    for piece in source.pieces:
        result = offline(port, piece)
        texts.append(result["text"])
        words += [{**w, "start": w["start"] + offset, "end": w["end"] + offset}
                  for w in result.get("words") or []]
        offset += len(piece) / RATE
    return {"text": " ".join(texts), "words": words}


def regions(audio: np.ndarray) -> list[tuple[float, float]]:
    detector = SpeechDetector(VadOptions(pad_ms=0))
    return [(r.start, r.end) for r in detector.speech_regions(soxr.resample(audio, RATE, 16_000))]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def item_timings(run: LiveRun, speech: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Per item with text: end of speech to completed, and speech start to its first delta."""
    finals, firsts = [], []
    started = {e["item_id"]: e["audio_start_ms"] / 1000
               for _, e in run.of("input_audio_buffer.speech_started")}
    stopped = {e["item_id"]: e["audio_end_ms"] / 1000
               for _, e in run.of("input_audio_buffer.speech_stopped")}
    deltas: dict[str, float] = {}
    for t, e in run.of("conversation.item.input_audio_transcription.delta"):
        deltas.setdefault(e["item_id"], t)
    for t, e in run.of("conversation.item.input_audio_transcription.completed"):
        item = e["item_id"]
        if not e["transcript"] or item not in started or item not in stopped:
            continue
        inside = [(s, end) for s, end in speech if end > started[item] and s < stopped[item]]
        if not inside:
            continue
        finals.append(t - inside[-1][1])
        firsts.append(deltas[item] - max(inside[0][0], started[item]))
    return finals, firsts


def commit_lags(run: LiveRun, words: list[dict[str, Any]], language: str) -> list[float]:
    """Each delta word matched to the offline word it spells: the delta's arrival minus the word's end."""
    lang = language
    live: list[tuple[str, float]] = []
    for t, e in run.of("conversation.item.input_audio_transcription.delta"):
        live += [(normalise(w, lang), t) for w in e["delta"].split()]
    reference = [normalise(w["word"], lang) for w in words]
    matcher = difflib.SequenceMatcher(None, [w for w, _ in live], reference, autojunk=False)
    lags = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            if reference[block.b + k]:
                lags.append(live[block.a + k][1] - words[block.b + k]["end"])
    return lags


def measure_source(server: ServerProcess, source: Source) -> dict[str, Any]:
    reference = offline_pieces(server.http_port, source)
    speech = regions(source.audio)
    language = source.language if source.language != "mixed" else None
    run = stream(server.http_port, source.audio,
                 session={"audio": {"input": {"transcription": {"language": language}}}})
    if run.error is not None:
        raise RuntimeError(f"{source.name}: {run.error!r}")
    finals, firsts = item_timings(run, speech)
    lags = commit_lags(run, reference.get("words") or [], source.language)
    langs = source.languages
    if len(langs) == 1:
        live_wer = wer([source.reference], [run.text], langs[0])
        offline_wer = wer([source.reference], [reference["text"]], langs[0])
        against = wer([reference["text"]], [run.text], langs[0])
    else:  # each clip's language: the texts are compared as one per language, pooled
        live_wer = wer([" ".join(source.references)], [run.text], "mixed")
        offline_wer = wer([" ".join(source.references)], [reference["text"]], "mixed")
        against = wer([reference["text"]], [run.text], "mixed")
    words = len(normalise(" ".join(source.references), langs[0] if len(langs) == 1 else "mixed").split())
    errors = [e["error"].get("code") for _, e in run.of("error")]
    return {"name": source.name, "audio_s": run.audio_s, "items": len(run.completed), "finals": finals,
            "error_events": errors,
            "reference_words": words,
            "firsts": firsts, "lags": lags, "live_wer": live_wer, "offline_wer": offline_wer,
            "against_offline": against, "live_text": run.text, "offline_text": reference["text"]}


def concurrent_lags(server: ServerProcess, source: Source, streams: int) -> tuple[float, float, int]:
    reference = offline_pieces(server.http_port, source)
    words = reference.get("words") or []
    runs: list[LiveRun] = []
    lock = threading.Lock()

    def one(offset: float) -> None:
        time.sleep(offset)  # staggered, as real users are: not all at the same word
        run = stream(server.http_port, source.audio,
                     session={"audio": {"input": {"transcription": {"language": source.language}}}})
        with lock:
            runs.append(run)

    threads = [threading.Thread(target=one, args=(0.37 * i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lags = [lag for run in runs for lag in commit_lags(run, words, source.language)]
    failed = sum(1 for run in runs for _ in run.of("error"))
    return percentile(lags, 0.5), percentile(lags, 0.95), failed


def file_latency(server: ServerProcess, audio: np.ndarray, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        offline(server.http_port, audio)
        times.append(time.monotonic() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="one long recording only")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "live-bench.json")
    parser.add_argument("--whole-window", action="store_true",
                        help="LIVE_FIT_WINDOW=0: live decodes on whisper's whole 30 s window (the reference)")
    args = parser.parse_args()
    found = sources(args.quick)
    results: dict[str, Any] = {"cpu": cpu_note(), "sources": [], "streams": {}, "file": {}}
    env = {"MAX_LIVE_SESSIONS": "32", "ALLOW_NO_AUTH": "1",
           "LIVE_FIT_WINDOW": "0" if args.whole_window else "1"}
    results["live_fit_window"] = not args.whole_window
    with ServerProcess(env=env) as server:
        for source in found:
            measured = measure_source(server, source)
            results["sources"].append(measured)
            print(json.dumps({k: v for k, v in measured.items() if not k.endswith("_text")
                              and k not in ("finals", "firsts", "lags")}), flush=True)
        scaling = next(s for s in found if s.name.startswith("en_voxpopuli")) if not args.quick else found[0]
        for count in args.streams:
            p50, p95, errors = concurrent_lags(server, scaling, count)
            results["streams"][count] = {"lag_p50": p50, "lag_p95": p95, "errors": errors}
            print(f"{count} streams: commit lag p50 {p50:.2f} s, p95 {p95:.2f} s, error events {errors}",
                  flush=True)
        clip = next(c for c in load_manifest(for_wer=True) if c.kind == "short" and c.duration > 8)
        file_audio = np.concatenate([load_24k(clip.path)] * 3)
        alone = file_latency(server, file_audio, 3)
        beside: list[float] = []
        live = threading.Thread(target=lambda: stream(server.http_port, scaling.audio, session={
            "audio": {"input": {"transcription": {"language": scaling.language}}}}))
        live.start()
        time.sleep(3.0)  # the stream is under way
        beside = file_latency(server, file_audio, 3)
        live.join()
        results["file"] = {"audio_s": len(file_audio) / RATE, "alone": alone, "beside_live": beside}
        print(f"file request {len(file_audio) / RATE:.1f} s: alone {statistics.median(alone):.2f} s, "
              f"beside a live stream {statistics.median(beside):.2f} s", flush=True)
    finals = [v for s in results["sources"] for v in s["finals"]]
    firsts = [v for s in results["sources"] for v in s["firsts"]]
    lags = [v for s in results["sources"] for v in s["lags"]]
    results["summary"] = {"final_p50": percentile(finals, 0.5), "final_p95": percentile(finals, 0.95),
                          "first_p50": percentile(firsts, 0.5), "first_p95": percentile(firsts, 0.95),
                          "lag_p50": percentile(lags, 0.5), "lag_p95": percentile(lags, 0.95),
                          "items": len(finals), "words": len(lags)}
    print(json.dumps(results["summary"]), flush=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The figures as docs/live.md's tables."""
    summary, file = results["summary"], results["file"]
    rows = [
        "| figure | goal | measured |", "|---|---|---|",
        f"| end of speech to `completed`, p50 | ≤ 1.0 s | {summary['final_p50']:.2f} s |",
        f"| end of speech to `completed`, p95 | ≤ 1.5 s | {summary['final_p95']:.2f} s |",
        f"| commit lag (a word's audio end to its delta), p50 | ≤ 2.0 s | {summary['lag_p50']:.2f} s "
        f"(p95 {summary['lag_p95']:.2f} s) |",
        f"| first delta after speech starts, p50 | ≤ 2.0 s | {summary['first_p50']:.2f} s "
        f"(p95 {summary['first_p95']:.2f} s) |",
    ]
    for source in results["sources"]:
        gap = source["live_wer"] - source["offline_wer"]
        rows.append(f"| WER of `completed`, {source['name']} ({source['audio_s']:.0f} s, "
                    f"{source['items']} items) "
                    f"| ≤ +1.5 points over offline | {source['live_wer']:.1f} vs offline "
                    f"{source['offline_wer']:.1f}: {gap:+.1f} (live against offline text: "
                    f"{source['against_offline']:.1f}) |")
    counted = results["sources"]
    if all("reference_words" in source for source in counted):
        words = sum(source["reference_words"] for source in counted)
        live, offline = (sum(source[key] * source["reference_words"] for source in counted) / words
                         for key in ("live_wer", "offline_wer"))
        rows.append(f"| WER of `completed`, the sources pooled ({words} words) | ≤ +1.5 points over offline "
                    f"| {live:.1f} vs offline {offline:.1f}: {live - offline:+.1f} |")
    one = results["streams"].get("1") or results["streams"].get(1)
    held = [n for n, s in results["streams"].items() if one and s["lag_p50"] <= 2 * one["lag_p50"]]
    most = max(map(int, held))
    rows.append(f"| streams held at real time before commit lag doubles | measured | {most} |")
    alone, beside = statistics.median(file["alone"]), statistics.median(file["beside_live"])
    rows.append(f"| a {file['audio_s']:.0f} s file request, alone / beside one live stream, p50 | measured | "
                f"{alone:.2f} s / {beside:.2f} s |")
    rows += ["", "| live streams at once | commit lag p50 | p95 | error events |", "|---|---|---|---|"]
    rows += [f"| {n} | {s['lag_p50']:.2f} s | {s['lag_p95']:.2f} s | {s['errors']} |"
             for n, s in results["streams"].items()]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
