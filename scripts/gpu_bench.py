"""Decode speed on random weights of a real model's shape: openai-whisper's decoder beside our loop's passes.

Random weights of large-v3's or turbo's shape serve for speed (the weights
themselves do not travel to a GPU machine). End-of-text is suppressed so every
decode runs exactly ``--tokens`` steps: the per-batch time then measures the
decoder, not how soon random weights happen to stop. Prints one markdown
table; ``--out`` also writes it.

Run on a GPU: python scripts/gpu_bench.py --model large-v3 turbo --batches 1 32
Check on a CPU: python scripts/gpu_bench.py --model tiny --device cpu --batches 1 2 --tokens 8
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from whisper.decoding import DecodingOptions, DecodingTask
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import get_tokenizer

from asr_server.engine import forward, kv_cache
from asr_server.engine.cuda_graphs import GraphedPasses
from asr_server.engine.model_loading import hold_in
from asr_server.engine.pass_plan import Entry, advance, make_plan
from asr_server.engine.search import SearchSpec, WindowSearch
from asr_server.engine.token_choice import Rules

SHAPES = {
    "large-v3": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "turbo": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
    "tiny": ModelDimensions(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4),
}


def whisper_decode(model: Whisper, mel: torch.Tensor, options: DecodingOptions) -> None:
    results = DecodingTask(model, options).run(mel)
    assert all(len(r.tokens) == options.sample_len for r in results), "a decode stopped early"


class LoopDecoder:
    """The decoding loop's work for a batch of windows: encoder (stacked), prompts, then one decoder
    pass per token for every window (eager, or replayed from CUDA graphs captured here, before any
    timing) and the searches advanced (pass_plan.py)."""

    def __init__(self, model: Whisper, batch: int, options: DecodingOptions, dtype: torch.dtype,
                 graphs: bool) -> None:
        self.tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                       language="en")
        self.rules = Rules(self.tokenizer, model.dims.n_audio_ctx)
        self.rules.suppress = sorted({*self.rules.suppress, self.tokenizer.eot})  # every decode runs all
        self.beam = options.beam_size
        device = next(model.parameters()).device
        self.caches = kv_cache.Caches(model, batch, self.beam or 1, dtype, batched=device.type == "cuda",
                                      scratch=graphs)
        self.graphs = GraphedPasses(self.caches) if graphs else None
        if self.graphs is not None:
            self.graphs.capture_all()
            assert self.graphs.enabled, "a CUDA graph failed its capture (see the log)"

    def __call__(self, model: Whisper, mel: torch.Tensor, options: DecodingOptions) -> None:
        caches, rules = self.caches, self.rules
        features = forward.encode(model, mel)
        prompt = list(self.tokenizer.sot_sequence)
        entries = []
        for window in features:
            slot = caches.open(window.unsqueeze(0))
            search = WindowSearch(SearchSpec(0.0, beam_size=self.beam), prompt, 0, options.sample_len or 32,
                                  448)
            logits = forward.prefill(caches, slot, prompt, search.rows, (0, len(prompt) - 1))
            advance(rules, make_plan(caches, rules, [Entry(slot, search)]),
                    logits[1:].expand(search.rows, -1).clone())
            entries.append(Entry(slot, search))
        while not all(entry.search.done for entry in entries):
            # as the loop's pass: one copy, the beams' moves, the pass, one read
            bucket = self.graphs.bucket(sum(e.search.rows for e in entries)) if self.graphs else None
            plan = make_plan(caches, rules, entries, pad_to=bucket)
            forward.rearrange(caches, plan)
            logits = forward.step(caches, plan) if self.graphs is None else self.graphs.run(plan)
            moves = advance(rules, plan, logits)
            entries = [Entry(entry.slot, entry.search, moved)
                       for entry, moved in zip(entries, moves, strict=True)]
        assert all(entry.search.length - len(prompt) == options.sample_len for entry in entries)
        for entry in entries:
            caches.close(entry.slot)


def timed(decode: Callable[[Whisper, torch.Tensor, DecodingOptions], None], model: Whisper,
          mel: torch.Tensor, options: DecodingOptions, repeats: int) -> float:
    """Median seconds per decode of the whole batch (encoder included), after one warm-up."""
    times = []
    for i in range(repeats + 1):
        if mel.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        decode(model, mel, options)
        if mel.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def shown(value: float, unit: str = "") -> str:
    """Milliseconds of seconds, or a ratio with ``unit``; a dash for what was not measured."""
    if value != value:  # NaN: not run (whisper's batched beam search, graphs on the CPU)
        return "–"
    return f"{value:.2f}{unit}" if unit else f"{value * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", default=["large-v3", "turbo"], choices=list(SHAPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="ours: the weights held in it (default float16 on CUDA, float32 on the CPU); "
                             "openai-whisper keeps float32 weights")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    fp16 = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if fp16 else "float32"))
    where = torch.cuda.get_device_name(device) if fp16 else "CPU"
    lines = [f"Random weights, {args.tokens}-token decode (end-of-text suppressed), beam {args.beam}, "
             f"on {where}, torch {torch.__version__}; openai-whisper as it runs itself (float32 weights, "
             f"{'float16 activations, its weights cast on every op' if fp16 else 'float32'}), ours with the "
             f"weights held in {str(dtype).removeprefix('torch.')} (asr_server/engine/model_loading.py); "
             f"median of {args.repeats} per batch, encoder included.", "",
             "| model | batch | openai-whisper ms | ours, eager ms | ours, CUDA graphs ms | speed-up | "
             "ours clips/s |", "|---|---|---|---|---|---|---|"]
    for name in args.model:
        torch.manual_seed(0)
        model = Whisper(SHAPES[name]).to(device).eval()
        with torch.no_grad():  # random weights scaled so activations stay finite in float16
            for parameter in model.parameters():
                parameter.normal_(0, 0.02)
        held = copy.deepcopy(model)
        hold_in(held, dtype)
        eot = get_tokenizer(model.is_multilingual, num_languages=model.num_languages).eot
        options = DecodingOptions(language="en", fp16=fp16, sample_len=args.tokens, without_timestamps=True,
                                  suppress_tokens=[-1, eot], beam_size=args.beam if args.beam > 1 else None)
        for batch in args.batches:
            mel = torch.randn(batch, model.dims.n_mels, 3000, device=device)
            with torch.inference_mode():
                theirs = float("nan")
                if args.beam == 1 or batch == 1:  # whisper's own batched beam search fails
                    theirs = timed(whisper_decode, model, mel, options, args.repeats)
                ours_mel = mel.to(dtype)
                eager = timed(LoopDecoder(held, batch, options, dtype, graphs=False), held, ours_mel, options,
                              args.repeats)
                graphed = float("nan")
                if fp16:
                    graphed = timed(LoopDecoder(held, batch, options, dtype, graphs=True), held, ours_mel,
                                    options, args.repeats)
            ours = graphed if fp16 else eager
            lines.append(f"| {name} | {batch} | {shown(theirs)} | {shown(eager)} | {shown(graphed)} | "
                         f"{shown(theirs / ours, 'x')} | {batch / ours:.1f} |")
            print(lines[-1], flush=True)
        del model, held
        if fp16:
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
