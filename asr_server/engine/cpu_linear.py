"""The CPU's fast Linear layers and vocabulary projection: int8, and bf16 packed for oneDNN.

The one place that calls torch's private CPU kernels, checked against torch's version
(``check_torch``): an upgrade of torch is this file's work.

**int8** (``ASR_PRECISION=int8``), CTranslate2's scheme, every Linear layer and the vocabulary
projection:

- Weights: int8, one scale per output row, made once at load.
- Activations: quantised on the fly, one scale per token row, with all 8 bits, so requests that
  share a batch never share a scale (torch.ao's dynamic int8 used one scale per tensor and 7 bits,
  and cost 1-7 WER points: docs/accuracy.md).
- The product: ``torch._int_mm`` (int8 x int8 into int32; oneDNN's VNNI kernels on x86), scaled
  back to float32 by the row's and the weight row's scales.
- Attention, softmax, LayerNorm, the KV cache, the embeddings' lookup and the two convolutions stay
  float32. (Keeping the three decoder layers whose inputs carry the largest outliers in float32
  cut their error from 3.5-4.3% to none and did not change the WER verdict: docs/accuracy.md.)

**bf16, packed** (``ASR_PRECISION=bfloat16`` on the CPU): every Linear layer's weight and the
vocabulary projection's reordered once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, as inductor's freezing does) and multiplied by
``torch.ops.mkldnn._linear_pointwise``. The same bits as ``F.linear`` and as ``hidden @ W.T`` on
bf16 (tests/test_cpu_linear.py), so bf16's WER stands; 1.5-2x faster for a few rows (the
vocabulary at one row: 3.0 ms against 1.4 ms, docs/benchmarks.md).

The token embedding keeps its weight for the lookup: whisper's own decoder (word alignment,
language detection) projects with it; only the decoding loop's passes (forward.py) call
``Vocabulary.project``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import cast

import torch
from torch import Tensor
from whisper.model import Whisper

KNOWN_TORCH = ("2.13",)


def check_torch() -> None:
    """The private kernels below are checked against these torch versions (major.minor)."""
    version = ".".join(torch.__version__.split(".")[:2])
    if version not in KNOWN_TORCH:
        raise RuntimeError(f"asr_server/engine/cpu_linear.py is checked against torch "
                           f"{', '.join(KNOWN_TORCH)}, not {torch.__version__}: check it, then add the "
                           "version (or set ASR_PRECISION=exact)")


def _quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """int8 rows of a 2-D float32 ``x`` and each row's scale (rows, 1): x ~ q * scale."""
    peak = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-30)  # an all-zero row stays zero
    quantized = (x * (127.0 / peak)).round_().to(torch.int8)
    return quantized, peak / 127.0


class Int8Weight(torch.nn.Module):
    """A weight (out, in) as int8 rows with one float32 scale each."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        weight = weight.detach().float()
        quantized, scales = _quantize_rows(weight)
        self.register_buffer("quantized", quantized)
        self.register_buffer("scales", scales.squeeze(1))
        self.quantized: Tensor
        self.scales: Tensor

    def times(self, x: Tensor) -> Tensor:
        """x (..., in) @ weight.T, in float32."""
        rows = x.reshape(-1, x.shape[-1]).float()
        if rows.shape[0] == 0:
            return rows.new_zeros((*x.shape[:-1], self.quantized.shape[0]))
        quantized, row_scales = _quantize_rows(rows)
        # The weight as stored (out, in), transposed as a view: measured faster than a contiguous
        # (in, out) copy for a single row, as fast for many.
        product = torch._int_mm(quantized, self.quantized.T).float()
        out = product.mul_(row_scales).mul_(self.scales)
        return out.view(*x.shape[:-1], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.times(x)


class Int8Linear(Int8Weight):
    """A Linear layer in int8: whisper's ``Linear`` with the same bias, float32 in and out."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self.bias: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        out = self.times(x)
        return out if self.bias is None else out.add_(self.bias)


class PackedLinear(torch.nn.Module):
    """A bf16 Linear layer with its weight packed once for oneDNN: ``F.linear``'s bits, faster."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features = weight.shape[0]
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.packed: Tensor
        self.bias: Tensor | None

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out


class Vocabulary(torch.nn.Embedding):
    """The token embedding, its lookup as before, and its projection to logits by ``projection``
    (an ``Int8Weight`` or a ``PackedLinear``); forward.py's passes call ``project``."""

    def __init__(self, embedding: torch.nn.Embedding, projection: torch.nn.Module) -> None:
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach())
        self.projection = projection

    def project(self, hidden: Tensor) -> Tensor:
        """The logits (..., vocabulary), float32, of the decoder's last hidden states."""
        logits: Tensor = self.projection(hidden)
        return logits.float()


PARTS = ("encoder", "decoder", "vocabulary")


def quantize_int8(model: Whisper, parts: Collection[str] = PARTS) -> Whisper:
    """The model with the ``parts`` in int8, swapped in place: the encoder's Linear layers, the
    decoder's, the vocabulary projection. The server swaps all three; a part alone is one lever,
    measured alone (scripts/batch_profile.py --int8)."""
    _on_the_cpu(model, "int8", "float16")
    with torch.no_grad():
        if "encoder" in parts:
            _swap_linears(model.encoder, Int8Linear)
        if "decoder" in parts:
            _swap_linears(model.decoder, Int8Linear)
        if "vocabulary" in parts:
            embedding = model.decoder.token_embedding
            model.decoder.token_embedding = Vocabulary(embedding, Int8Weight(embedding.weight))
    return cast(Whisper, model)


def pack_bf16(model: Whisper) -> Whisper:
    """The bf16 model's Linear layers and vocabulary projection packed for oneDNN, in place."""
    _on_the_cpu(model, "bfloat16 packing", "float16 (unpacked)")
    if model.decoder.token_embedding.weight.dtype != torch.bfloat16:
        raise ValueError("pack_bf16 takes a model held in bfloat16")
    with torch.no_grad():
        for half in (model.encoder, model.decoder):
            _swap_linears(half, lambda linear: PackedLinear(linear.weight, linear.bias))
        embedding = model.decoder.token_embedding
        model.decoder.token_embedding = Vocabulary(embedding, PackedLinear(embedding.weight, None))
    return cast(Whisper, model)


def onednn_available() -> bool:
    available: bool = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return available


def _on_the_cpu(model: Whisper, what: str, on_cuda: str) -> None:
    if next(model.parameters()).device.type != "cpu":
        raise RuntimeError(f"{what} is for the CPU (torch's CPU kernels); on CUDA use {on_cuda}")
    check_torch()


def _swap_linears(half: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> None:
    for name, linear in list(half.named_modules()):
        if isinstance(linear, torch.nn.Linear):
            parent, _, attribute = name.rpartition(".")
            setattr(half.get_submodule(parent), attribute, make(linear))
