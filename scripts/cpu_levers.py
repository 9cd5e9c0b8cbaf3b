"""The CPU levers of issue 23, op by op: each way of running base's hot matmuls, against torch's float32.

The decoder's time on a CPU goes to a few matmul shapes: the vocabulary projection (51,865 x 512,
tied to the token embedding) and the Linear layers (512 x 512 for attention, 2,048 x 512 and
512 x 2,048 for the MLP), at 1 row (greedy, one request), 5 (beam 5) and 40 (8 requests at beam
5). For each shape and row count this times, in one run, interleaved, on 2 threads:

- torch float32 (``F.linear``: MKL on x86), the reference;
- numpy float32 (OpenBLAS), what faster-whisper's CTranslate2 is close to;
- oneDNN float32 with the weight packed once (``torch.ops.mkldnn._linear_pointwise``, as
  inductor's freezing uses it);
- bfloat16 weights and activations (``F.linear``; native only with avx512_bf16 or amx_bf16);
- int8 weights, one scale per output row, bfloat16 activations (``torch._weight_int8pack_mm``);
- torch.ao's dynamic int8 (one activation scale per tensor), what ``ASR_QUANTIZE=int8`` was;
- int8 weights with a scale per row and activations with a scale per token row, multiplied by
  ``torch._int_mm`` (asr_server/engine/cpu_linear.py, ``ASR_PRECISION=int8``): CTranslate2's scheme.

Prints a markdown table: ms (best of ``--repeats``), the ratio to torch float32, and each
variant's error against float64 (max |y - exact| / max |exact|). Random weights of the real
shapes, scaled as base's are; only speed and rounding are measured here, not WER.

Run: .venv/bin/python scripts/cpu_levers.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_server.engine.cpu_linear import Int8Weight

SHAPES = {"vocabulary 51865x512": (51865, 512), "attention 512x512": (512, 512),
          "MLP in 2048x512": (2048, 512), "MLP out 512x2048": (512, 2048)}


def variants(weight: torch.Tensor, rows: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Each lever as a function of float32 activations (rows, in) to outputs (rows, out)."""
    scales = weight.abs().amax(dim=1) / 127.0
    int8 = torch.round(weight / scales.unsqueeze(1)).to(torch.int8)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    numpy_weight = weight.T.contiguous().numpy()
    bf16 = weight.to(torch.bfloat16)
    dynamic = torch.ao.quantization.quantize_dynamic(  # type: ignore[attr-defined]
        torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)),
        {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        dynamic[0].set_weight_bias(torch.quantize_per_tensor(weight, float(weight.abs().max() / 127), 0,
                                                             torch.qint8), None)
    bf16_scales = scales.to(torch.bfloat16)
    per_row = Int8Weight(weight)
    return {
        "torch float32 (MKL)": lambda x: F.linear(x, weight),
        "numpy float32 (OpenBLAS)": lambda x: torch.from_numpy(x.numpy() @ numpy_weight),
        "oneDNN float32, packed": lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [],
                                                                                ""),
        "bfloat16": lambda x: F.linear(x.to(torch.bfloat16), bf16),
        "int8 weights per row, bf16 activations": lambda x: torch._weight_int8pack_mm(
            x.to(torch.bfloat16), int8, bf16_scales),
        "torch.ao dynamic int8 (the old ASR_QUANTIZE)": lambda x: dynamic(x),
        "int8 per weight row and per token row, torch._int_mm (ASR_PRECISION=int8)": per_row.times,
    }


def best_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each run's best time, the runs taking turns: a drift in the host's speed falls on all alike."""
    best = {label: float("inf") for label in runs}
    for _ in range(repeats + 1):
        for label, run in runs.items():
            started = time.perf_counter()
            run()
            best[label] = min(best[label], time.perf_counter() - started)
    return {label: seconds * 1000 for label, seconds in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 5, 40])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read().split("flags", 2)[1].split("\n", 1)[0].split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
              if f in flags]
    print(f"{platform.machine()}, flags {' '.join(wanted)}; torch {torch.__version__}, "
          f"{args.threads} threads; best of {args.repeats}, the variants taking turns\n")
    print("| shape | rows | variant | ms | / torch float32 | error |")
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, (out_features, in_features) in SHAPES.items():
            weight = torch.randn(out_features, in_features, generator=generator) * in_features ** -0.5
            for rows in args.rows:
                x = torch.randn(rows, in_features, generator=generator)
                exact = (x.double() @ weight.double().T)
                found = variants(weight, rows)
                timings = best_ms({label: (lambda run=run, x=x: run(x)) for label, run in found.items()},
                                  args.repeats)
                reference = timings["torch float32 (MKL)"]
                for label, run in found.items():
                    error = float((run(x).double() - exact).abs().max() / exact.abs().max())
                    print(f"| {name} | {rows} | {label} | {timings[label]:.3f} | "
                          f"{timings[label] / reference:.2f}x | {error:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
