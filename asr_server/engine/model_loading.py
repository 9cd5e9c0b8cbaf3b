"""The checkpoint onto its device, at its precision: which device and precision, the weights converted once.

``ASR_PRECISION`` is one of:

- ``exact``: float32 weights, whisper's own float32 arithmetic: whisper's tokens (the oracle tests
  hold the server to them);
- ``int8``: the Linear layers and the vocabulary projection in int8 with a scale per weight row
  and per token row (cpu_linear.py), the rest float32; the CPU only;
- ``bfloat16`` / ``float16``: the weights held in that dtype.

The weights are converted once, at load, so no op casts them again (whisper's
own Linear casts a float32 weight to the input's dtype on every call, as
autocast does: measured slower than float32 itself on this CPU). LayerNorm's
weights and both positional embeddings stay float32: whisper's LayerNorm
runs in float32 whatever its input, and a position's sinusoid rounded to
bf16's 8 bits would move every frame. The softmaxes run in float32 in
forward.py and in whisper's own attention.

``auto``, the default, is the fast precision each device's WER allows (the rule and the figures:
docs/accuracy.md): float16 on CUDA; on a CPU int8 if ``INT8_KEEPS_WER``, else bfloat16 where the
CPU multiplies bf16 natively (AMX or AVX512-BF16, read from the kernel's CPU flags and logged at
start) and ``BF16_KEEPS_WER``, else exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from whisper.model import ModelDimensions, Whisper

from asr_server.precision_names import PRECISION_SETTINGS

# Each precision's weights dtype (int8's float32 weights are quantised after loading: cpu_linear.py).
DTYPES = {"exact": torch.float32, "int8": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert ("auto", *DTYPES) == PRECISION_SETTINGS
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Whether a precision passes the WER rule against exact on every clip of ../shared/eval through
# the server, beam 5 and greedy: the pooled WER at most 0.3 points above exact, no language more
# than 1.0 above (scripts/eval_wer.py --precisions exact int8 bfloat16; figures in docs/accuracy.md).
# Measured 2026-12-06: int8 failed it (greedy Spanish +1.52; pooled +0.00, beam 5 pooled -0.77);
# bfloat16 passed it (pooled -0.41 at beam 5, -0.18 greedy; German +0.96 at beam 5 the worst).
INT8_KEEPS_WER = False
BF16_KEEPS_WER = True


class ModelNotFound(FileNotFoundError):
    """The configured checkpoint does not exist."""


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ASR_DEVICE={setting} but torch sees no CUDA device")
    return device


def claim_device(device: torch.device) -> None:
    """Make ``cuda:N`` the current device, so that whatever allocates without naming one (whisper's
    Triton kernels, CUDA's own library handles, ``torch.cuda`` calls) lands on N and not on GPU 0."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def native_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU flags that say it multiplies bf16 natively; none where the kernel does not say."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags)


def resolve_precision(setting: str, device: torch.device, native_bf16: tuple[str, ...] = (),
                      int8_keeps_wer: bool = INT8_KEEPS_WER, bf16_keeps_wer: bool = BF16_KEEPS_WER) -> str:
    """The precision the model runs at (the module's docstring says what ``auto`` picks); the two
    flags: what the WER rule decided (docs/accuracy.md). int8 is refused on CUDA."""
    if setting == "int8" and device.type != "cpu":
        raise RuntimeError("ASR_PRECISION=int8 is for the CPU; on CUDA use float16 (or auto)")
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "float16"
    if int8_keeps_wer:
        return "int8"
    if native_bf16 and bf16_keeps_wer:
        return "bfloat16"
    return "exact"


def load_model(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> Whisper:
    """A checkpoint written by ``asr_tools/fetch_weights.py`` (or whisper's) on ``device``, in ``dtype``."""
    if not path.is_file():
        raise ModelNotFound(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    if checkpoint.get("alignment_heads") is not None:
        model.set_alignment_heads(checkpoint["alignment_heads"])
    hold_in(model, dtype)
    return cast(Whisper, model.to(device).eval())


def hold_in(model: Whisper, dtype: torch.dtype) -> None:
    """Convert the weights to ``dtype`` once, all but LayerNorm's and the positional embeddings."""
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if name != "positional_embedding":
                parameter.data = parameter.data.to(dtype)
    # The encoder's positional embedding is a buffer, the model's only floating one: left float32.

