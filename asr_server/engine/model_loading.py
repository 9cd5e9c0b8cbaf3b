"""The checkpoint onto its device, in its dtype: which device and dtype, and the weights converted once.

``ASR_DTYPE`` is ``auto``, ``float32``, ``bfloat16`` or ``float16``. The
weights are converted once, at load, so no op casts them again (whisper's
own Linear casts a float32 weight to the input's dtype on every call, as
autocast does: measured slower than float32 itself on this CPU). LayerNorm's
weights and both positional embeddings stay float32: whisper's LayerNorm
runs in float32 whatever its input, and a position's sinusoid rounded to
bf16's 8 bits would move every frame. The softmaxes run in float32 in
forward.py and in whisper's own attention.

``auto`` picks float16 on CUDA; on a CPU that multiplies bf16 natively
(AMX or AVX512-BF16, read from the kernel's CPU flags and logged at start)
it would pick bfloat16 if ``BF16_KEEPS_WER`` said the WER held
(docs/accuracy.md: it did not, in German); float32 everywhere else.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import cast

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from asr_server.config import DTYPE_SETTINGS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert ("auto", *DTYPES) == DTYPE_SETTINGS
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Whether bf16 stays within 0.5 WER points of float32 in every language, beam 5 and greedy
# (scripts/eval_wer.py --dtypes float32 bfloat16, docs/accuracy.md). Measured 2026-12-02: German
# lost 0.96 points at beam 5, so auto keeps float32 on every CPU; bfloat16 is there to ask for.
BF16_KEEPS_WER = False


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


def resolve_dtype(setting: str, device: torch.device, native_bf16: tuple[str, ...] = (),
                  bf16_keeps_wer: bool = BF16_KEEPS_WER) -> torch.dtype:
    """The dtype the weights are held in (see the module's docstring for ``auto``); ``bf16_keeps_wer``:
    what the WER rule decided of bf16 (docs/accuracy.md)."""
    if setting != "auto":
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.float16
    if native_bf16 and bf16_keeps_wer:
        return torch.bfloat16
    return torch.float32


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


def quantize_int8(model: Whisper) -> Whisper:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised per call).

    Weights get a scale per output channel: one per matrix cost twice the WER (docs/accuracy.md).

    whisper's own Linear subclass only casts weights to the input's dtype, a no-op in
    float32, so it is swapped for torch's plain Linear, which the quantiser knows.
    """
    def plain(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, whisper.model.Linear):
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.load_state_dict(child.state_dict())
                setattr(module, name, linear)
            else:
                plain(child)

    plain(model)
    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it moves to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return cast(Whisper, quantized)
