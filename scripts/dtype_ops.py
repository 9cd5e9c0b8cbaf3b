"""What bf16 costs against float32 on this CPU, op by op: the shapes of whisper base's passes.

On a CPU with AMX or AVX512-BF16 bf16 matmuls run natively; elsewhere torch emulates them, and
this shows how slowly (docs/benchmarks.md, "Weights held in a dtype"). Prints a markdown table.

Run: .venv/bin/python scripts/dtype_ops.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_server.__main__ import OPENMP_DEFAULTS  # the server's OpenMP settings, before torch loads

assert OPENMP_DEFAULTS

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from asr_server.engine.model_loading import native_bf16_flags  # noqa: E402

# name, rows, outputs, inputs, repeats
LINEARS = (("decoder MLP linear, 1 row", 1, 2048, 512, 200),
           ("decoder MLP linear, 40 rows (8 x beam 5)", 40, 2048, 512, 100),
           ("encoder MLP linear, 1500 rows", 1500, 2048, 512, 10),
           ("vocabulary projection, 1 row", 1, 51865, 512, 20))


def ms_per_call(work: Callable[[], object], repeats: int) -> float:
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats * 1000


def linear_ms(rows: int, outputs: int, inputs: int, repeats: int, dtype: torch.dtype) -> float:
    x, w, b = torch.randn(rows, inputs, dtype=dtype), torch.randn(outputs, inputs, dtype=dtype), \
        torch.randn(outputs, dtype=dtype)
    return ms_per_call(lambda: F.linear(x, w, b), repeats)


def conv_ms(dtype: torch.dtype) -> float:
    x, conv = torch.randn(1, 80, 3000, dtype=dtype), torch.nn.Conv1d(80, 512, 3, padding=1).to(dtype)
    return ms_per_call(lambda: conv(x), 3)


def main() -> int:
    print(f"{torch.get_num_threads()} threads, native bf16: {' '.join(native_bf16_flags()) or 'none'}")
    print("| op | float32 ms | bfloat16 ms | bf16 / f32 |\n|---|---|---|---|")
    rows = [(name, *(linear_ms(m, n, k, repeats, dtype) for dtype in (torch.float32, torch.bfloat16)))
            for name, m, n, k, repeats in LINEARS]
    rows.append(("encoder conv1 (80 -> 512, 3000 frames)", conv_ms(torch.float32), conv_ms(torch.bfloat16)))
    for name, f32, bf16 in rows:
        print(f"| {name} | {f32:.3f} | {bf16:.3f} | {bf16 / f32:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
