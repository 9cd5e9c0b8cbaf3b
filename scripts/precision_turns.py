"""The CPU levers of issue 23 in turn: each precision's engine in one process, the clips taking turns.

Separate runs on a shared host drift by 10% and more between them (docs/benchmarks.md); here
every engine transcribes each clip in turn, one request at a time, the order rotating clip by
clip, so a drift falls on all alike. Engines, by name:

- ``exact``: float32, whisper's tokens (the reference, first);
- ``int8``: every Linear layer and the vocabulary projection (asr_server/engine/cpu_linear.py);
- ``int8:encoder``, ``int8:decoder``, ``int8:vocabulary``: one part alone, the rest exact;
- ``bfloat16``: weights in bf16, packed for oneDNN; ``bfloat16:unpacked``: the same bits, unpacked.

Prints a markdown table: each engine's total seconds, its speed against the first, and how many
texts differ from the first's.

Run: .venv/bin/python scripts/precision_turns.py --beam 1 --engines exact int8 bfloat16
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The server's OpenMP settings, set before torch loads (as bench.py does).
from asr_server.__main__ import OPENMP_DEFAULTS

assert OPENMP_DEFAULTS

import torch  # noqa: E402
from whisper.model import Whisper  # noqa: E402

from asr_server.config import Config  # noqa: E402
from asr_server.contract.domain import TranscribeOptions  # noqa: E402
from asr_server.engine.audio_decoding import decode_wav  # noqa: E402
from asr_server.engine.cpu_linear import PARTS, quantize_int8  # noqa: E402
from asr_server.engine.model_loading import DTYPES, load_model  # noqa: E402
from asr_server.engine.transcriber import Engine, EngineSettings  # noqa: E402
from tests.harness import load_manifest  # noqa: E402

ENGINES = ("exact", "int8", *(f"int8:{part}" for part in PARTS), "bfloat16", "bfloat16:unpacked")


def build(name: str, beam: int, models: dict[torch.dtype, Whisper]) -> Engine:
    precision, _, variant = name.partition(":")
    dtype = DTYPES["exact" if variant in PARTS else precision]
    if dtype not in models:
        models[dtype] = load_model(Config().model_path, torch.device("cpu"), dtype)
    settings = EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=beam,
                              precision="exact" if variant in PARTS else precision,
                              pack_bf16=variant != "unpacked")
    engine = Engine(settings, copy.deepcopy(models[dtype]))  # each engine swaps layers in its own copy
    if variant in PARTS:
        quantize_int8(engine.model, [variant])
    engine.warm_up()
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--clips", type=int, default=16, help="the first N short clips, spread (0: all)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    models: dict[torch.dtype, Whisper] = {}
    engines = {name: build(name, args.beam, models) for name in args.engines}
    clips = [c for c in load_manifest() if c.kind == "short"]
    if args.clips:
        clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    seconds = dict.fromkeys(engines, 0.0)
    texts: dict[str, list[str]] = {name: [] for name in engines}
    names = list(engines)
    for turn in range(args.rounds * len(items)):
        samples, options = items[turn % len(items)]
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            started = time.perf_counter()
            text = engines[name].transcribe(samples, options).text
            seconds[name] += time.perf_counter() - started
            if turn < len(items):
                texts[name].append(text)
    audio = sum(c.duration for c in clips) * args.rounds
    first = names[0]
    print(f"{len(clips)} clips, {audio:.0f} s of audio over {args.rounds} round(s), "
          f"{'greedy' if args.beam == 1 else f'beam {args.beam}'}, one request at a time, "
          f"{torch.get_num_threads()} threads, the engines taking turns clip by clip\n")
    print(f"| engine | s | speed against {first} | texts unlike {first}'s |")
    print("|---|---|---|---|")
    for name in names:
        differ = sum(a != b for a, b in zip(texts[name], texts[first], strict=True))
        print(f"| {name} | {seconds[name]:.1f} | {seconds[first] / seconds[name]:.2f}x | "
              f"{differ} of {len(clips)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
