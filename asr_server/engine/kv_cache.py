"""The decoder's static KV cache: every slot of every layer, reserved once when the loop is made.

A window being decoded owns a *slot*: its audio's cross-attention keys and
values, computed once from the encoder's output (a temperature fallback
reuses them), and its sequences' self-attention keys and values, one row per
sequence, up to ``rows`` rows of ``n_text_ctx`` tokens. There are
``ASR_MAX_BATCH`` slots, reserved at start (on CUDA checked against the
memory free beside the model: ``CacheDoesNotFit`` if it is short), so a pass
never grows the cache and a failure can never leave it half grown; a slot
whose opening fails is free again. On the CPU an idle cache gives its pages
back (``forget``): the storage is made anew, untouched.

A fitted window (a live decode: transcribe_state.py) has fewer frames than
the 1500 reserved: a slot keeps its audio's length (``cross_frames``). Per
window, attention reads only those frames; batched attention reads all of
them, the rest masked by ``cross_mask`` (0 or -inf per slot and frame, in
place, so a CUDA graph's captured pass reads it too).
"""

from __future__ import annotations

import torch
from torch import Tensor
from whisper.model import Whisper

# At most this share of the memory free on a CUDA device once the model is loaded goes to the cache:
# the rest is for the passes' activations (the encoder's above all).
CACHE_SHARE_OF_FREE_MEMORY = 0.8


class CacheDoesNotFit(RuntimeError):
    """The static cache for ``ASR_MAX_BATCH`` slots is larger than the device can hold beside the model."""


def cache_bytes(model: Whisper, slots: int, rows: int, dtype: torch.dtype) -> int:
    """What the static cache of ``slots`` slots takes: self-attention for ``rows`` rows of the whole
    context, and the audio's cross-attention keys and values, in every layer."""
    dims = model.dims
    per_layer: int = 2 * (rows * dims.n_text_ctx + dims.n_audio_ctx) * dims.n_text_state
    element: int = torch.empty((), dtype=dtype).element_size()
    return slots * int(dims.n_text_layer) * per_layer * element


class Caches:
    """The caches of every window in the batch: ``slots`` slots of ``rows`` sequences, reserved once."""

    def __init__(self, model: Whisper, slots: int, rows: int, dtype: torch.dtype, batched: bool,
                 scratch: bool = False) -> None:
        """``scratch``: one slot more, never given out, that the padded rows of a CUDA graph's pass write."""
        dims = model.dims
        self.model = model
        self.rows = rows
        self.dtype = dtype
        self.batched = batched
        self.device = model.decoder.token_embedding.weight.device
        self.heads = dims.n_text_head
        self.head_dim = dims.n_text_state // dims.n_text_head
        self.frames = dims.n_audio_ctx
        self.n_ctx: int = dims.n_text_ctx
        self.layers = dims.n_text_layer
        self.slots = slots
        self.scratch_slot = slots if scratch else None
        self.all_slots = slots + scratch
        self.reserved_bytes = cache_bytes(model, self.all_slots, rows, dtype)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.reserved_bytes > CACHE_SHARE_OF_FREE_MEMORY * free:
                raise CacheDoesNotFit(
                    f"the KV cache for ASR_MAX_BATCH={slots} needs {self.reserved_bytes / 2**30:.2f} GiB and "
                    f"{free / 2**30:.2f} GiB of {self.device} is free beside the model (at most "
                    f"{CACHE_SHARE_OF_FREE_MEMORY:.0%} of it may go to the cache): lower ASR_MAX_BATCH")
        self.lengths = [0] * self.all_slots  # per slot: tokens in its self-attention cache
        self.free = list(range(slots))
        self.self_k: list[Tensor] = []  # per layer: (slots, rows, heads, n_ctx, head_dim)
        self.self_v: list[Tensor] = []
        self.cross_k: list[Tensor] = []  # per layer: (slots, heads, head_dim, frames)
        self.cross_v: list[Tensor] = []  # per layer: (slots, heads, frames, head_dim)
        self.cross_frames = [self.frames] * self.all_slots  # per slot: its audio's frames
        self.cross_mask = torch.zeros((self.all_slots, self.frames), dtype=dtype, device=self.device)
        self._reserve()

    @property
    def capacity(self) -> int:
        return self.n_ctx

    def _reserve(self) -> None:
        # Batched attention reads every position of a slot, masked: nothing there may be NaN. On
        # the CPU, storage left empty is not resident until a pass writes it.
        make = torch.zeros if self.batched else torch.empty
        shapes = ((self.self_k, (self.rows, self.heads, self.n_ctx, self.head_dim)),
                  (self.self_v, (self.rows, self.heads, self.n_ctx, self.head_dim)),
                  (self.cross_k, (self.heads, self.head_dim, self.frames)),
                  (self.cross_v, (self.heads, self.frames, self.head_dim)))
        for caches, shape in shapes:
            caches[:] = [make((self.all_slots, *shape), dtype=self.dtype, device=self.device)
                         for _ in range(self.layers)]

    def open(self, features: Tensor) -> int:
        """A free slot for one window, its cross-attention caches computed from ``features`` (1, frames,
        state).

        If computing them fails (out of memory), the slot is free again: nothing leaks.
        """
        if not self.free:
            raise RuntimeError(f"all {self.slots} cache slots are taken: the loop admits at most that many")
        slot = min(self.free)
        self.free.remove(slot)
        try:
            self.lengths[slot] = 0
            features = features.to(self.dtype)
            frames = int(features.shape[1])
            if not 0 < frames <= self.frames:
                raise ValueError(f"a window of {frames} encoder frames: at most {self.frames}")
            for layer, block in enumerate(self.model.decoder.blocks):
                attn = block.cross_attn
                keys = attn.key(features).view(frames, self.heads, self.head_dim)
                values = attn.value(features).view(frames, self.heads, self.head_dim)
                self.cross_k[layer][slot, :, :, :frames] = keys.permute(1, 2, 0)
                self.cross_v[layer][slot, :, :frames] = values.transpose(0, 1)
                if self.batched:  # read under the mask by every pass: no value of an earlier window stays
                    self.self_k[layer][slot].zero_()
                    self.self_v[layer][slot].zero_()
            self.cross_frames[slot] = frames
            self.cross_mask[slot, :frames] = 0
            self.cross_mask[slot, frames:] = float("-inf")
        except BaseException:
            self.free.append(slot)
            raise
        return slot

    def cross(self, layer: int, slot: int) -> tuple[Tensor, Tensor]:
        """A slot's cross-attention keys (heads, head_dim, frames) and values (heads, frames, head_dim)
        in ``layer``, its audio's frames only."""
        frames = self.cross_frames[slot]
        return self.cross_k[layer][slot, :, :, :frames], self.cross_v[layer][slot, :, :frames]

    def close(self, slot: int) -> None:
        if slot not in self.free:
            self.free.append(slot)

    def forget(self) -> None:
        """Idle on the CPU: give the pages the last windows wrote back (the same reservation, untouched).

        Only when no window is open; CUDA keeps its reservation as it is.
        """
        if self.device.type == "cpu" and not self.batched and len(self.free) == self.slots:
            self._reserve()

    def fits(self, length: int) -> None:
        """Raise unless ``length`` tokens fit a slot (whisper's prompt and sample lengths always do)."""
        if length > self.n_ctx:
            raise ValueError(f"{length} tokens do not fit the decoder's context of {self.n_ctx}")
