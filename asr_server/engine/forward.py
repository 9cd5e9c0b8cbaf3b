"""The model's forward passes for the decoding loop: encoder, prompt, and one decoder pass for all.

Every window being decoded owns a *slot* in the static cache
(``kv_cache.Caches``): its audio's cross-attention keys and values, and its
sequences' self-attention keys and values.

``step`` feeds one token more to every live sequence at once: the linear
layers, the MLPs and the vocabulary projection see all rows together. It
attends in one of two forms, on the same storage:

- ``batched``: one masked attention over all slots, a fixed number of
  kernel launches per layer whatever the number of requests (CUDA);
- per window: each window against its own slot at its own length, no work
  on padding (the CPU, where it measured faster: docs/benchmarks.md).

A pass that fails leaves every length as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.model import Whisper

from asr_server.engine.kv_cache import Caches


@dataclass(frozen=True)
class Feed:
    """One window's part of a decoder pass: its slot and the token each of its rows takes next."""

    slot: int
    tokens: Sequence[int]


def encode(model: Whisper, mels: Tensor) -> Tensor:
    """The encoder's output (windows, frames, state) for mels (windows, n_mels, 3000)."""
    return model.encoder(mels)  # type: ignore[no-any-return]


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
        scores = ((q * head_dim ** -0.5) @ caches.cross_k[layer][slot]).float()
        out = (F.softmax(scores, dim=-1).to(q.dtype) @ caches.cross_v[layer][slot])
        x = x + cross.out(out.transpose(0, 1).reshape(1, length, -1))
        x = x + block.mlp(_norm(block.mlp_ln, x))
    hidden: Tensor = _norm(decoder.ln, x)[0, list(read)]
    caches.lengths[slot] = length
    logits: Tensor = (hidden @ decoder.token_embedding.weight.to(hidden.dtype).T).float()
    return logits


def step(caches: Caches, feeds: Sequence[Feed]) -> Tensor:
    """One token more for every row of every feed, in one pass; the logits (rows, vocabulary), float32."""
    decoder = caches.model.decoder
    lengths = [caches.lengths[feed.slot] for feed in feeds]
    caches.fits(max(lengths) + 1)
    counts = [len(feed.tokens) for feed in feeds]
    device = caches.device
    slot_of_row = torch.tensor([feed.slot for feed in feeds for _ in feed.tokens], device=device)
    row_in_slot = torch.tensor([row for feed in feeds for row in range(len(feed.tokens))], device=device)
    position = torch.tensor([length for length, count in zip(lengths, counts, strict=True)
                             for _ in range(count)], device=device)
    tokens = torch.tensor([[token] for feed in feeds for token in feed.tokens], device=device)
    x = decoder.token_embedding(tokens) + decoder.positional_embedding[position].unsqueeze(1)
    x = x.to(caches.dtype)
    total, heads, head_dim = tokens.shape[0], caches.heads, caches.head_dim
    attend: _PerWindow | _Batched = (_Batched(caches, feeds, lengths) if caches.batched
                                     else _PerWindow(caches, feeds, lengths, counts))
    for layer, block in enumerate(decoder.blocks):
        attn, h = block.attn, _norm(block.attn_ln, x)
        q = attn.query(h).view(total, heads, head_dim)
        where = (slot_of_row, row_in_slot, slice(None), position)
        caches.self_k[layer][where] = attn.key(h).view(total, heads, head_dim)
        caches.self_v[layer][where] = attn.value(h).view(total, heads, head_dim)
        x = x + attn.out(attend.self(layer, q, slot_of_row, row_in_slot).reshape(total, 1, -1))
        cross, h = block.cross_attn, _norm(block.cross_attn_ln, x)
        q = cross.query(h).view(total, heads, head_dim)
        x = x + cross.out(attend.cross(layer, q, slot_of_row, row_in_slot).reshape(total, 1, -1))
        x = x + block.mlp(_norm(block.mlp_ln, x))
    hidden: Tensor = _norm(decoder.ln, x)[:, -1]
    logits: Tensor = (hidden @ decoder.token_embedding.weight.to(hidden.dtype).T).float()
    for feed in feeds:  # only once the whole pass has succeeded: a failed one may be run again
        caches.lengths[feed.slot] += 1
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

    def __init__(self, caches: Caches, feeds: Sequence[Feed], lengths: list[int], counts: list[int]) -> None:
        self.caches, self.feeds, self.lengths, self.counts = caches, feeds, lengths, counts

    def self(self, layer: int, q: Tensor, slot_of_row: Tensor, row_in_slot: Tensor) -> Tensor:
        keys, values = self.caches.self_k[layer], self.caches.self_v[layer]
        scale = self.caches.head_dim ** -0.5
        parts = []
        for feed, length, part in zip(self.feeds, self.lengths, torch.split(q, self.counts), strict=True):
            rows, end = len(feed.tokens), length + 1
            k, v = keys[feed.slot, :rows, :, :end], values[feed.slot, :rows, :, :end]
            parts.append(_softmax_apply((part.unsqueeze(2) * scale) @ k.transpose(-1, -2), v))
        return torch.cat(parts)  # (rows, heads, 1, head_dim)

    def cross(self, layer: int, q: Tensor, slot_of_row: Tensor, row_in_slot: Tensor) -> Tensor:
        keys, values = self.caches.cross_k[layer], self.caches.cross_v[layer]
        scale = self.caches.head_dim ** -0.5
        parts = []
        for feed, part in zip(self.feeds, torch.split(q, self.counts), strict=True):
            # The rows of one window share its audio: their queries form one block.
            block = part.transpose(0, 1) * scale  # (heads, rows, head_dim)
            parts.append(_softmax_apply(block @ keys[feed.slot], values[feed.slot]).transpose(0, 1))
        return torch.cat(parts)  # (rows, heads, head_dim)


class _Batched:
    """All slots attend at once, padded and masked: launches per layer do not grow with the batch."""

    def __init__(self, caches: Caches, feeds: Sequence[Feed], lengths: list[int]) -> None:
        self.caches = caches
        self.used = max(feed.slot for feed in feeds) + 1
        self.end = max(lengths) + 1
        ends = torch.ones(self.used, dtype=torch.long)  # slots outside this pass: any one position
        ends[[feed.slot for feed in feeds]] = torch.tensor([length + 1 for length in lengths])
        mask = torch.zeros(self.used, self.end)
        mask[torch.arange(self.end).expand(self.used, -1) >= ends.unsqueeze(1)] = float("-inf")
        self.mask = mask.view(self.used, 1, 1, 1, self.end).to(caches.device)

    def self(self, layer: int, q: Tensor, slot_of_row: Tensor, row_in_slot: Tensor) -> Tensor:
        c = self.caches
        padded = q.new_zeros((self.used, c.rows, c.heads, 1, c.head_dim))
        padded[slot_of_row, row_in_slot] = q.unsqueeze(2) * c.head_dim ** -0.5
        keys = c.self_k[layer][: self.used, :, :, : self.end]
        values = c.self_v[layer][: self.used, :, :, : self.end]
        out = _softmax_apply((padded @ keys.transpose(-1, -2)).float() + self.mask, values)
        return out[slot_of_row, row_in_slot]  # (rows, heads, 1, head_dim)

    def cross(self, layer: int, q: Tensor, slot_of_row: Tensor, row_in_slot: Tensor) -> Tensor:
        c = self.caches
        padded = q.new_zeros((self.used, c.heads, c.rows, c.head_dim))
        padded[slot_of_row, :, row_in_slot] = q * c.head_dim ** -0.5
        out = _softmax_apply(padded @ c.cross_k[layer][: self.used], c.cross_v[layer][: self.used])
        return out[slot_of_row, :, row_in_slot]  # (rows, heads, head_dim)
