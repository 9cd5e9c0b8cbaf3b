"""What a fitted encoder window (a live decode's: engine/transcribe_state.py) costs in accuracy and
saves in time, against whisper's whole 30 s window, on cuts of the long English eval recordings.

For each padding given, the same random cuts (2 to 15 s, from VoxPopuli and LJSpeech) are decoded
with the whole window and with the fitted one (the cut's mel, then zeros to its length plus the
padding in whole seconds, as the server builds it; whisper's encoder with its positional embedding
cut to that length). Prints the share of words (whisper's English normaliser) that differ from the
whole window's decode, and both decodes' time. Then the encoder alone, on the server's model (bf16
where the server picks it), at window lengths from 30 s down.

Run: .venv/bin/python scripts/fitted_window.py [--paddings 1 3 6 10] [--cuts 12]
     .venv/bin/python scripts/fitted_window.py --paddings 6 --prefixes-of en_voxpopuli_000 22.96
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import soxr
import torch
import whisper

from asr_server.__main__ import OPENMP_DEFAULTS  # noqa: F401  (sets them unless set)
from asr_server.config import Config
from asr_server.engine import forward
from asr_server.engine.transcriber import Engine, EngineSettings
from scripts.bench import cpu_note
from tests.harness import load_manifest, wer
from tests.live_client import RATE, load_24k


def decode(model: whisper.model.Whisper, mel: torch.Tensor, frames: int, beam_size: int | None = None) -> str:
    encoder = model.encoder
    whole = encoder.positional_embedding
    encoder.positional_embedding = whole[: frames // 2]
    try:
        result = whisper.decode(model, whisper.pad_or_trim(mel, frames),
                                whisper.DecodingOptions(language="en", fp16=False, beam_size=beam_size))
    finally:
        encoder.positional_embedding = whole
    return result.text  # type: ignore[no-any-return]


def accuracy(paddings: list[float], cuts: int) -> None:
    model = whisper.load_model(str(Config().model_path))
    rng = random.Random(1)
    picked = []
    for clip in [c for c in load_manifest(for_wer=True) if c.kind == "long" and c.lang == "en"]:
        audio = soxr.resample(load_24k(clip.path), RATE, 16_000).astype(np.float32)
        for _ in range(cuts):
            length = rng.uniform(2, 15)
            start = rng.uniform(0, len(audio) / 16_000 - length)
            picked.append(audio[int(start * 16_000): int((start + length) * 16_000)])
    mels = [whisper.log_mel_spectrogram(cut, padding=whisper.audio.N_SAMPLES)[:, : len(cut) // 160]
            for cut in picked]
    started = time.perf_counter()
    whole = [decode(model, mel, 3000) for mel in mels]
    whole_s = time.perf_counter() - started
    print(f"{len(mels)} cuts; whole 30 s window: {whole_s:.1f} s to decode them all")
    for padding in paddings:
        started = time.perf_counter()
        fitted = [decode(model, mel, min(3000, -(-(mel.shape[-1] + int(padding * 100)) // 100) * 100))
                  for mel in mels]
        print(f"padding {padding:g} s: {wer(whole, fitted, 'en'):.1f} % of words differ from the whole "
              f"window's; {time.perf_counter() - started:.1f} s")


def prefixes(name: str, start_s: float, paddings: list[float]) -> None:
    """A turn as live decoding hears it: the recording from ``start_s`` on, 1 s, 1.5 s, ... 6.5 s of it,
    each decoded with the whole window and with each padding's fitted one (beam 5)."""
    model = whisper.load_model(str(Config().model_path))
    clip = next(c for c in load_manifest(for_wer=True) if c.path.stem == name)
    audio = soxr.resample(load_24k(clip.path), RATE, 16_000).astype(np.float32)
    for length in np.arange(1.0, 7.0, 0.5):
        cut = audio[int(start_s * 16_000): int((start_s + length) * 16_000)]
        mel = whisper.log_mel_spectrogram(cut, padding=whisper.audio.N_SAMPLES)[:, : len(cut) // 160]
        for padding in [30.0, *paddings]:
            frames = min(3000, -(-(mel.shape[-1] + int(padding * 100)) // 100) * 100)
            print(f"{length:.1f} s, {'whole' if frames == 3000 else f'padding {padding:g} s'}: "
                  f"{decode(model, mel, frames, beam_size=5)}")


def encoder_cost() -> None:
    config = Config()
    engine = Engine(EngineSettings(config.model_path, "cpu", config.torch_threads, 1, vad=False))
    print(f"encoder alone, {engine.precision}:")
    with torch.inference_mode():
        for seconds in (30, 20, 15, 10, 8, 6, 4):
            mel = torch.randn(1, engine.model.dims.n_mels, seconds * 100, dtype=engine.dtype)
            forward.encode(engine.model, mel)
            started = time.perf_counter()
            for _ in range(5):
                forward.encode(engine.model, mel)
            print(f"  {seconds:2d} s window: {(time.perf_counter() - started) / 5:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paddings", type=float, nargs="+", default=[1, 3, 6, 10])
    parser.add_argument("--cuts", type=int, default=12, help="per recording")
    parser.add_argument("--prefixes-of", nargs=2, metavar=("RECORDING", "START_S"),
                        help="only: growing prefixes of one recording from START_S, as a live turn grows")
    args = parser.parse_args()
    print(cpu_note())
    if args.prefixes_of:
        prefixes(args.prefixes_of[0], float(args.prefixes_of[1]), args.paddings)
        return
    accuracy(args.paddings, args.cuts)
    encoder_cost()


if __name__ == "__main__":
    main()
