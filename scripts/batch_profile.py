"""Where the decoding loop's time goes, in-process: the engine alone, without sockets or clients.

Runs the short clips of ``../shared/eval/`` one at a time, then as one stream
through ``Engine.transcribe_batch`` with ``--capacity`` places (as the server
does with ``ASR_MAX_BATCH`` and a full queue), and splits the stream's wall
time into the encoder, the decoder passes (with how many requests each
carried) and the rest (prompts, language detection, the searches' bookkeeping,
the VAD). ``--attention`` picks the pass's attention form (forward.py),
``--precision`` its ASR_PRECISION (engine/model_loading.py).

Run: .venv/bin/python scripts/batch_profile.py --beam 5 --capacity 8 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The server's OpenMP settings, set before torch loads (as bench.py does).
from asr_server.__main__ import OPENMP_DEFAULTS

assert OPENMP_DEFAULTS

import torch  # noqa: E402

from asr_server.config import Config  # noqa: E402
from asr_server.contract.domain import TranscribeOptions  # noqa: E402
from asr_server.engine import forward  # noqa: E402
from asr_server.engine.audio_decoding import decode_wav  # noqa: E402
from asr_server.engine.cpu_linear import PARTS, quantize_int8  # noqa: E402
from asr_server.engine.transcriber import Engine, EngineSettings  # noqa: E402
from asr_server.precision_names import PRECISION_SETTINGS  # noqa: E402
from tests.harness import load_manifest  # noqa: E402


class Timings:
    """Wall time spent in the encoder and in decoder passes, measured on the worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.encoder_s = self.passes_s = 0.0
        self.passes: list[int] = []
        started: list[float] = []
        encoder = engine.model.encoder
        encoder.register_forward_pre_hook(lambda module, args: started.append(time.perf_counter()))
        encoder.register_forward_hook(lambda module, args, out: self._encoded(started.pop()))
        real = forward.step

        def timed(caches: forward.Caches, plan: forward.Plan) -> torch.Tensor:
            begun = time.perf_counter()
            try:
                return real(caches, plan)
            finally:
                self.passes_s += time.perf_counter() - begun
                self.passes.append(len(plan.entries))

        forward.step = timed  # the loop calls forward.step through the module

    def _encoded(self, begun: float) -> None:
        self.encoder_s += time.perf_counter() - begun

    def reset(self) -> None:
        self.encoder_s = self.passes_s = 0.0
        self.passes = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--capacity", type=int, nargs="+", default=[8])
    parser.add_argument("--clips", type=int, default=0, help="the first N short clips (0: all)")
    parser.add_argument("--attention", choices=("per-window", "batched"), default="per-window")
    parser.add_argument("--precision", choices=PRECISION_SETTINGS, default="auto")
    parser.add_argument("--unpacked", action="store_true",
                        help="with --precision bfloat16: the weights left unpacked (what packing gains)")
    parser.add_argument("--int8", nargs="+", choices=PARTS, default=[],
                        help="with --precision exact: only these parts in int8 (one lever alone)")
    args = parser.parse_args()
    engine = Engine(EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(),
                                   beam_size=args.beam, batched_attention=args.attention == "batched",
                                   precision=args.precision, pack_bf16=not args.unpacked))
    if args.int8:
        if engine.precision != "exact":
            parser.error("--int8 takes --precision exact")
        quantize_int8(engine.model, args.int8)  # in place: the loop decodes with the same modules
    engine.warm_up()
    timings = Timings(engine)
    clips = [c for c in load_manifest() if c.kind == "short"]
    if args.clips:
        clips = clips[:: max(1, len(clips) // args.clips)][: args.clips]
    items = [(decode_wav(c.path.read_bytes(), 1e9).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    audio = sum(c.duration for c in clips)
    parts = (f" + int8 {', '.join(args.int8)}" if args.int8 else "") + (", unpacked" if args.unpacked else "")
    print(f"{len(clips)} clips, {audio:.0f} s of audio, beam {args.beam}, {torch.get_num_threads()} threads, "
          f"{args.attention} attention, {engine.precision}{parts}")
    print("| run | wall s | encoder s | decoder passes s | passes | requests per pass | rest s | gain |")
    print("|---|---|---|---|---|---|---|---|")
    timings.reset()
    started = time.perf_counter()
    alone = [engine.transcribe(samples, options).text for samples, options in items]
    alone_s = time.perf_counter() - started
    print(f"| one at a time | {alone_s:.1f} | {timings.encoder_s:.1f} | – | – | – | "
          f"{alone_s - timings.encoder_s:.1f} (decoding and all) | 1.00x |", flush=True)
    for capacity in args.capacity:
        timings.reset()
        started = time.perf_counter()
        results = engine.transcribe_batch(items, capacity)
        wall = time.perf_counter() - started
        texts = [None if isinstance(r, Exception) else r.text for r in results]
        differ = sum(a != b for a, b in zip(alone, texts, strict=True))
        rest = wall - timings.encoder_s - timings.passes_s
        per_pass = sum(timings.passes) / max(1, len(timings.passes))
        print(f"| {capacity} places | {wall:.1f} | {timings.encoder_s:.1f} | {timings.passes_s:.1f} | "
              f"{len(timings.passes)} | {per_pass:.2f} | {rest:.1f} | "
              f"{alone_s / wall:.2f}x |{f' ({differ} texts differ)' if differ else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
