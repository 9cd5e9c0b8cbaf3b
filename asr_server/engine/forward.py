"""The model's forward passes for the decoding loop: encoder, prompt, and one decoder pass for all.

Every window being decoded owns a *slot* in the static cache
(``kv_cache.Caches``): its audio's cross-attention keys and values, and its
sequences' self-attention keys and values.

``step`` feeds one token more to every live sequence at once: the linear
layers, the MLPs and the vocabulary projection see all rows together. It
attends in one of two forms, on the same storage:

- ``batched``: one masked attention over all slots, a fixed number of
  kernel launches per layer whatever the number of requests, the
  self-attention in ``scaled_dot_product_attention`` (CUDA);
- per window: each window against its own slot at its own length, no work
  on padding (the CPU, where it measured faster: docs/benchmarks.md).

A pass that fails leaves every length as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import TextDecoder, Whisper

from asr_server.engine import whisper_compat
from asr_server.engine.cpu_linear import Vocabulary
from asr_server.engine.kv_cache import Caches
from asr_server.engine.pass_plan import Feed, Plan


def encode(model: Whisper, mels: Tensor) -> Tensor:
    """The encoder's output (windows, frames / 2, state) for mels (windows, n_mels, frames): 30 s, or a
    fitted window shorter (whisper_compat.encode)."""
    return whisper_compat.encode(model, mels)


def prefill(caches: Caches, slot: int, prompt: Sequence[int], rows: int, read: Sequence[int]) -> Tensor:
    """Run a window's prompt through the decoder into ``slot``, for ``rows`` sequences that share it.

    Returns the logits (float32) at the positions ``read``.
    """
    decoder = caches.model.decoder
    length = len(prompt)
    caches.fits(length)
    tokens = torch.tensor([list(prompt)], device=caches.device)
    x = (decoder.token_embedding(tokens) + decoder.positional_embedding[:length]).to(caches.dtype)
    causal = torch.full((length, length), float("-inf"), device=caches.device).triu_(1)
    heads, head_dim = caches.heads, caches.head_dim
    for layer, block in enumerate(decoder.blocks):
        attn, h = block.attn, _norm(block.attn_ln, x)
        q = attn.query(h).view(length, heads, head_dim).transpose(0, 1)
        k = attn.key(h).view(length, heads, head_dim).transpose(0, 1)
        v = attn.value(h).view(length, heads, head_dim).transpose(0, 1)
        caches.self_k[layer][slot, :rows, :, :length] = k
        caches.self_v[layer][slot, :rows, :, :length] = v
        scores = ((q * head_dim ** -0.5) @ k.transpose(-1, -2)).float() + causal
        out = (F.softmax(scores, dim=-1).to(q.dtype) @ v).transpose(0, 1).reshape(1, length, -1)
        x = x + attn.out(out)
        cross, h = block.cross_attn, _norm(block.cross_attn_ln, x)
        q = cross.query(h).view(length, heads, head_dim).transpose(0, 1)
        cross_k, cross_v = caches.cross(layer, slot)
        scores = ((q * head_dim ** -0.5) @ cross_k).float()
        out = (F.softmax(scores, dim=-1).to(q.dtype) @ cross_v)
        x = x + cross.out(out.transpose(0, 1).reshape(1, length, -1))
        x = x + block.mlp(_norm(block.mlp_ln, x))
    hidden: Tensor = _norm(decoder.ln, x)[0, list(read)]
    caches.lengths[slot] = length
    return project(decoder, hidden)


def rearrange(caches: Caches, plan: Plan) -> None:
    """Make the beams' moves since the last pass in the cache: row ``move_target`` of ``move_slot``
    continues row ``move_origin``, whose history it takes. One copy per layer for every slot."""
    if not plan.moved:
        return
    length = plan.move_length
    for cache in (*caches.self_k, *caches.self_v):
        history = cache[:, :, :, :length]
        history[plan.move_slot, plan.move_target] = history[plan.move_slot, plan.move_origin]


def step(caches: Caches, plan: Plan) -> Tensor:
    """One token more for every row of the plan, in one pass; the logits (rows, vocabulary), float32.

    Its indices are the plan's device tensors: nothing here copies to or reads from the device.
    """
    caches.fits(max(plan.lengths) + 1)
    attend = (_Batched(caches, plan.feed, max(plan.lengths) + 1) if caches.batched
              else _PerWindow(caches, plan))
    logits = decoder_pass(caches, plan.feed, attend)[: plan.rows]
    passed(caches, plan)
    return logits


def passed(caches: Caches, plan: Plan) -> None:
    """Count the pass's token in each slot: only once the whole pass has succeeded (a failed one may
    be run again)."""
    for entry in plan.entries:
        caches.lengths[entry.slot] += 1


def static_pass(caches: Caches, feed: Feed) -> Tensor:
    """The pass of a padded feed with the shapes fixed: every slot read to the whole context, as a
    CUDA graph captures it (cuda_graphs.py). Its rows' logits are the eager pass's."""
    return decoder_pass(caches, feed, _Batched(caches, feed, caches.n_ctx))


def decoder_pass(caches: Caches, feed: Feed, attend: _PerWindow | _Batched) -> Tensor:
    decoder = caches.model.decoder
    x = decoder.token_embedding(feed.tokens.unsqueeze(1))
    x = (x + decoder.positional_embedding[feed.position].unsqueeze(1)).to(caches.dtype)
    total, heads, head_dim = feed.rows, caches.heads, caches.head_dim
    where = (feed.slot_of_row, feed.row_in_slot, slice(None), feed.position)
    for layer, block in enumerate(decoder.blocks):
        attn, h = block.attn, _norm(block.attn_ln, x)
        q = attn.query(h).view(total, heads, head_dim)
        caches.self_k[layer][where] = attn.key(h).view(total, heads, head_dim)
        caches.self_v[layer][where] = attn.value(h).view(total, heads, head_dim)
        x = x + attn.out(attend.self(layer, q).reshape(total, 1, -1))
        cross, h = block.cross_attn, _norm(block.cross_attn_ln, x)
        q = cross.query(h).view(total, heads, head_dim)
        x = x + cross.out(attend.cross(layer, q).reshape(total, 1, -1))
        x = x + block.mlp(_norm(block.mlp_ln, x))
    hidden: Tensor = _norm(decoder.ln, x)[:, -1]
    return project(decoder, hidden)


def project(decoder: TextDecoder, hidden: Tensor) -> Tensor:
    """The vocabulary logits (float32) of ``hidden``: through the int8 or packed projection where
    the model has one (cpu_linear.py), else whisper's own product with the token embedding."""
    embedding = decoder.token_embedding
    if isinstance(embedding, Vocabulary):
        return embedding.project(hidden)
    logits: Tensor = (hidden @ embedding.weight.to(hidden.dtype).T).float()
    return logits


def _norm(norm: torch.nn.LayerNorm, x: Tensor) -> Tensor:
    """whisper's LayerNorm, without the two casts it makes around a bf16 or fp16 input: torch's CPU
    kernel takes that input with the float32 weights and computes in float32 itself (the same
    bits: tests/test_dtype.py). Elsewhere whisper's own, casts and all."""
    if x.dtype == torch.float32 or x.device.type != "cpu":
        return norm(x)  # type: ignore[no-any-return]
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _softmax_apply(scores: Tensor, values: Tensor) -> Tensor:
    return F.softmax(scores.float(), dim=-1).to(values.dtype) @ values


class _PerWindow:
    """Each window attends against its own slot at its own length."""

    def __init__(self, caches: Caches, plan: Plan) -> None:
        self.caches, self.plan = caches, plan

    def self(self, layer: int, q: Tensor) -> Tensor:
        keys, values = self.caches.self_k[layer], self.caches.self_v[layer]
        scale = self.caches.head_dim ** -0.5
        parts = []
        plan = self.plan
        for entry, length, part in zip(plan.entries, plan.lengths, torch.split(q, plan.counts), strict=True):
            rows, end = entry.search.rows, length + 1
            k, v = keys[entry.slot, :rows, :, :end], values[entry.slot, :rows, :, :end]
            parts.append(_softmax_apply((part.unsqueeze(2) * scale) @ k.transpose(-1, -2), v))
        return torch.cat(parts)  # (rows, heads, 1, head_dim)

    def cross(self, layer: int, q: Tensor) -> Tensor:
        scale = self.caches.head_dim ** -0.5
        parts = []
        for entry, part in zip(self.plan.entries, torch.split(q, self.plan.counts), strict=True):
            # The rows of one window share its audio: their queries form one block.
            block = part.transpose(0, 1) * scale  # (heads, rows, head_dim)
            keys, values = self.caches.cross(layer, entry.slot)
            parts.append(_softmax_apply(block @ keys, values).transpose(0, 1))
        return torch.cat(parts)  # (rows, heads, head_dim)


class _Batched:
    """All slots attend at once, padded and masked: launches per layer do not grow with the batch."""

    def __init__(self, caches: Caches, feed: Feed, end: int) -> None:
        self.caches, self.feed = caches, feed
        self.used = feed.slots_read
        self.end = end
        positions = torch.arange(self.end, device=caches.device)
        allowed = positions < feed.slot_ends.unsqueeze(1)  # (slots, end): position 0 always, no row empty
        # one row of the mask per (slot, row) pair, as scaled_dot_product_attention's batch
        self.allowed = allowed.unsqueeze(1).expand(self.used, caches.rows, self.end).reshape(
            self.used * caches.rows, 1, 1, self.end)

    def self(self, layer: int, q: Tensor) -> Tensor:
        c, feed = self.caches, self.feed
        padded = q.new_zeros((self.used, c.rows, c.heads, 1, c.head_dim))
        padded[feed.slot_of_row, feed.row_in_slot] = q.unsqueeze(2)
        keys = c.self_k[layer][: self.used, :, :, : self.end].flatten(0, 1)  # (slots x rows, heads, end, dim)
        values = c.self_v[layer][: self.used, :, :, : self.end].flatten(0, 1)
        out = F.scaled_dot_product_attention(padded.flatten(0, 1), keys, values, attn_mask=self.allowed)
        return out.view(self.used, c.rows, c.heads, 1, c.head_dim)[feed.slot_of_row, feed.row_in_slot]

    def cross(self, layer: int, q: Tensor) -> Tensor:
        c, feed = self.caches, self.feed
        padded = q.new_zeros((self.used, c.heads, c.rows, c.head_dim))
        padded[feed.slot_of_row, :, feed.row_in_slot] = q * c.head_dim ** -0.5
        scores = padded @ c.cross_k[layer][: self.used] + c.cross_mask[: self.used, None, None]
        out = _softmax_apply(scores, c.cross_v[layer][: self.used])  # a fitted window's padding masked
        return out[feed.slot_of_row, :, feed.row_in_slot]  # (rows, heads, head_dim)
