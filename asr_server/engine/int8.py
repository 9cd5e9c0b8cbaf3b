"""int8 on the CPU, CTranslate2's scheme: every Linear layer and the vocabulary projection.

- Weights: int8, one scale per output row, made once at load.
- Activations: quantised on the fly, one scale per token row, with all 8 bits, so requests that
  share a batch never share a scale (torch.ao's dynamic int8 used one scale per tensor and 7 bits,
  and cost 1-7 WER points: docs/accuracy.md).
- The product: ``torch._int_mm`` (int8 x int8 into int32; oneDNN's VNNI kernels on x86), scaled
  back to float32 by the row's and the weight row's scales.
- Attention, softmax, LayerNorm, the KV cache, the embeddings' lookup and the two convolutions stay
  float32. (Keeping the three decoder layers whose inputs carry the largest outliers in float32
  cut their error from 3.5-4.3% to none and did not change the WER verdict: docs/accuracy.md.)

The token embedding keeps its float32 weight: whisper's own decoder (word alignment, language
detection) projects with it; only the decoding loop's passes call ``Int8Vocabulary.project``.
Measured op by op in docs/benchmarks.md (scripts/cpu_levers.py), and its WER in docs/accuracy.md.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import torch
from torch import Tensor
from whisper.model import TextDecoder, Whisper


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


class Int8Vocabulary(torch.nn.Embedding):
    """The token embedding, its float32 lookup as before, and its projection to logits in int8."""

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach())
        self.int8 = Int8Weight(embedding.weight)

    def project(self, hidden: Tensor) -> Tensor:
        """The logits (..., vocabulary), float32, of the decoder's last hidden states."""
        return self.int8.times(hidden)


PARTS = ("encoder", "decoder", "vocabulary")


def quantize_int8(model: Whisper, parts: Collection[str] = PARTS) -> Whisper:
    """The model with the ``parts`` in int8, swapped in place: the encoder's Linear layers, the
    decoder's, the vocabulary projection. The server swaps all three; a part alone is one lever,
    measured alone (scripts/batch_profile.py --int8)."""
    if next(model.parameters()).device.type != "cpu":
        raise RuntimeError("int8 is for the CPU (torch._int_mm's CPU kernels); on CUDA use float16")

    def swap(half: torch.nn.Module) -> None:
        for name, linear in list(half.named_modules()):
            if isinstance(linear, torch.nn.Linear):
                parent, _, attribute = name.rpartition(".")
                setattr(half.get_submodule(parent), attribute, Int8Linear(linear))

    with torch.no_grad():
        if "encoder" in parts:
            swap(model.encoder)
        if "decoder" in parts:
            swap(model.decoder)
        if "vocabulary" in parts:
            model.decoder.token_embedding = Int8Vocabulary(model.decoder.token_embedding)
    return cast(Whisper, model)


def project(decoder: TextDecoder, hidden: Tensor) -> Tensor:
    """The vocabulary logits (float32) of ``hidden``: int8 where the model was quantised, else
    whisper's own product with the token embedding, in the hidden states' dtype."""
    embedding = decoder.token_embedding
    if isinstance(embedding, Int8Vocabulary):
        return embedding.project(hidden)
    logits: Tensor = (hidden @ embedding.weight.to(hidden.dtype).T).float()
    return logits
