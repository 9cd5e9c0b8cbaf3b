"""What a live turn's last decode costs with its committed words forced as its prefix, against
decoding its whole buffer again, on long buffers cut from the long English eval recordings.

A turn's last decode is the one the user waits for (live_decoding.py). Past 10 s of buffer it is
given the committed words still in the buffer as ``TranscribeOptions.prefix``, read in the prompt's
one pass, and decodes only what follows them. Here each cut (10 to 25 s, VoxPopuli and LJSpeech)
is decoded as the server's last decode is (its engine and precision, beam 5, the fitted window,
whisper's fallback), first freely, then with the free decode's words but the last third forced:
the committed words are those two hypotheses agreed on, so the free reading is what they hold.
Prints both decodes' time per cut and in all (the same process, one after the other), and the
share of words (whisper's English normaliser) of the forced decode that differ from the free one.

Run: .venv/bin/python scripts/forced_prefix.py [--cuts 6]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import soxr

from asr_server.__main__ import OPENMP_DEFAULTS  # noqa: F401  (sets them unless set)
from asr_server.config import Config
from asr_server.contract.domain import TranscribeOptions
from asr_server.engine.transcriber import Engine, EngineSettings
from scripts.bench import cpu_note
from tests.harness import load_manifest, wer
from tests.live_client import RATE, load_24k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuts", type=int, default=6, help="per recording")
    args = parser.parse_args()
    print(cpu_note())
    config = Config()
    engine = Engine(EngineSettings(config.model_path, "cpu", config.torch_threads, 5, vad=False))
    rng = random.Random(1)
    free_s, forced_s, free_texts, forced_texts = [], [], [], []
    for clip in [c for c in load_manifest(for_wer=True) if c.kind == "long" and c.lang == "en"]:
        audio = soxr.resample(load_24k(clip.path), RATE, 16_000).astype(np.float32)
        for _ in range(args.cuts):
            length = rng.uniform(10, 25)
            start = rng.uniform(0, len(audio) / 16_000 - length)
            cut = audio[int(start * 16_000): int((start + length) * 16_000)]
            options = TranscribeOptions("en", "transcribe", beam_size=5, fit_window=True)
            engine.transcribe(cut[: 16_000], options)  # the same warm state for both
            started = time.perf_counter()
            free = engine.transcribe(cut, options).text
            free_s.append(time.perf_counter() - started)
            words = free.split()
            prefix = " ".join(words[: len(words) * 2 // 3])
            started = time.perf_counter()
            forced = engine.transcribe(cut, TranscribeOptions(
                "en", "transcribe", beam_size=5, fit_window=True, prefix=prefix or None)).text
            forced_s.append(time.perf_counter() - started)
            free_texts.append(free)
            forced_texts.append(forced)
            print(f"{clip.path.stem} {start:6.1f} s + {length:4.1f} s, {len(words)} words: "
                  f"free {free_s[-1]:.2f} s, forced {forced_s[-1]:.2f} s", flush=True)
    print(f"{len(free_s)} cuts, {engine.precision}: free {sum(free_s):.1f} s in all "
          f"(median {statistics.median(free_s):.2f} s), forced {sum(forced_s):.1f} s "
          f"(median {statistics.median(forced_s):.2f} s): {sum(forced_s) / sum(free_s):.2f} of the time, "
          f"{statistics.median(f / g for f, g in zip(forced_s, free_s, strict=True)):.2f} per cut (median); "
          f"{wer(free_texts, forced_texts, 'en'):.1f} % of words differ from the free decode's")


if __name__ == "__main__":
    main()
