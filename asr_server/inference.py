"""The decoder's step-by-step forward pass, with caches laid out so that no step copies the audio.

openai-whisper's own ``PyTorchInference`` caches the cross-attention keys and
values as (batch, frames, state) and permutes them into heads on every step.
On the CPU a one-token query then sends attention down torch's math path,
which makes both 1500-frame tensors contiguous again on every step and every
layer: for beam search that copy was half the time of a decode. It also
keeps a copy of the audio per beam, and its batched beam search fails
outright (a batch of audio against a batch of beams).

Here the cross-attention keys are computed once per audio, already split into
heads and transposed, and the beams of one audio attend to them together as
one query block (cross-attention has no mask, so the rows are independent).
Every sequence of a group starts from the same prompt, so the prompt is
read once per audio and its caches copied to the group; and the vocabulary
projection is made only for the positions whisper's loop reads. Beam search
and the timestamp rules are whisper's, with their per-sequence reductions
over the vocabulary done for the whole batch at once.
Self-attention keys and values live in buffers that grow by doubling. An
audio whose search is over leaves the caches at once: a batch's later steps
cost only what its unfinished audios need, not the longest one's times all.
``decode`` is whisper's ``decode`` with this inference plugged into whisper's
own ``DecodingTask``: the search, the logit filters and the fallback
heuristics stay whisper's.

In a continuous batch (batching.py) each decode call keeps caches of its own
(``SteppedInference``), and ``decoder_step`` takes one token more for all of
them in one pass: the linear layers and the vocabulary projection see every
row at once, attention runs per call at its own length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.decoding import (
    ApplyTimestampRules,
    BeamSearchDecoder,
    DecodingOptions,
    DecodingResult,
    DecodingTask,
    Inference,
)
from whisper.model import MultiHeadAttention, TextDecoder, Whisper

from asr_server.batching import DecoderSteps

_FIRST_CAPACITY = 32


class ProjectedLogits:
    """The decoder's logits, projected onto the vocabulary only at the positions that are read.

    whisper's decoding loop reads the logits of the last position on every
    step, and of the start-of-transcript position once. Projecting every
    position of a long prompt would allocate (sequences x tokens x 51865)
    floats for nothing: hundreds of MB per batch.
    """

    def __init__(self, hidden: Tensor, embedding: Tensor, repeat: int, rows: Tensor | None = None,
                 total_rows: int = 0) -> None:
        self.hidden = hidden  # (rows, tokens, state), after the final layer norm
        self.embedding = embedding
        self.repeat = repeat  # each row stands for this many identical sequences
        self.rows = rows  # where the computed rows go among all ``total_rows``; None: they are all
        self.total_rows = total_rows

    @property
    def shape(self) -> torch.Size:
        rows, tokens = self.hidden.shape[:2]
        total = self.total_rows if self.rows is not None else rows * self.repeat
        return torch.Size((total, tokens, self.embedding.shape[0]))

    def __getitem__(self, key: tuple[slice, int]) -> Tensor:
        rows, position = key
        if rows != slice(None) or not isinstance(position, int):
            raise IndexError("only logits[:, position] is computed")
        x = self.hidden[:, position]
        logits = (x @ self.embedding.to(x.dtype).T).float()
        if self.repeat > 1:
            logits = logits.repeat_interleave(self.repeat, dim=0)
        if self.rows is None:
            return logits
        # Finished audios' rows: their scores are no longer read (whisper's decoders keep
        # appending to them until the whole batch is done), so they are left at zero.
        full = logits.new_zeros((self.total_rows, logits.shape[1]))
        full[self.rows] = logits
        return full


class GroupedCacheInference(Inference):  # type: ignore[misc]
    """Decoder forward passes for one decode call of ``n_audio`` audios times ``group`` sequences."""

    def __init__(self, model: Whisper, group: int,
                 finished: Callable[[Tensor], list[bool]] = lambda tokens: []) -> None:
        self.decoder: TextDecoder = model.decoder
        self.group = group
        self.finished = finished  # per audio of the batch: is its search done? (from the search)
        self.length = 0  # tokens already in the self-attention cache
        self.cross: list[tuple[Tensor, Tensor]] = []  # per block: keys (A, h, d, T), values (A, h, T, d)
        self.keys: list[Tensor] = []  # per block: (rows, h, capacity, d)
        self.values: list[Tensor] = []
        self.n_audio = 0
        self.active: list[int] = []  # the audios still decoded, in cache order

    def logits(self, tokens: Tensor, audio_features: Tensor) -> ProjectedLogits:
        repeat = 1
        if not self.cross:
            self._start(tokens.shape[0] // self.group, audio_features)
            unique = tokens[:: self.group]
            if self.group > 1 and torch.equal(unique.repeat_interleave(self.group, dim=0), tokens):
                # Every sequence of a group starts from the same prompt: read it once per audio.
                tokens, repeat = unique, self.group
        else:
            self._drop_finished(self.finished(tokens))
        rows = None
        if len(self.active) < self.n_audio:
            rows = self._rows(self.active).to(tokens.device)
            tokens = tokens[rows]
        hidden = self._forward(tokens[:, self.length:], self.group // repeat)
        if repeat > 1:
            self._repeat_rows(repeat)
        return ProjectedLogits(hidden, self.decoder.token_embedding.weight, repeat, rows,
                               self.n_audio * self.group)

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        if source_indices == list(range(len(source_indices))):
            return
        if any(source // self.group != target // self.group for target, source in enumerate(source_indices)):
            raise ValueError("a sequence moved to another audio's group")  # the cross cache is per audio
        # In cache order: each active audio's rows, pointing into that audio's own rows of the cache.
        compact = [position * self.group + source_indices[audio * self.group + j] - audio * self.group
                   for position, audio in enumerate(self.active) for j in range(self.group)]
        # Only the rows whose history changed are copied: a beam that kept its place keeps its cache.
        moved = [(target, source) for target, source in enumerate(compact) if target != source]
        if not moved:
            return
        device = self.keys[0].device
        targets = torch.tensor([target for target, _ in moved], device=device)
        sources = torch.tensor([source for _, source in moved], device=device)
        for cache in (*self.keys, *self.values):
            history = cache[:, :, : self.length]
            history.index_copy_(0, targets, history.index_select(0, sources))

    def _rows(self, audios: list[int]) -> Tensor:
        return torch.tensor([audio * self.group + j for audio in audios for j in range(self.group)])

    def _drop_finished(self, finished: list[bool]) -> None:
        """Take the audios whose search is done out of the caches: later steps cost them nothing."""
        keep = [position for position, audio in enumerate(self.active)
                if not (audio < len(finished) and finished[audio])]
        if len(keep) == len(self.active) or not keep:
            return
        device = self.keys[0].device
        audio_index = torch.tensor(keep, device=device)
        row_index = self._rows(keep).to(device)
        self.cross = [(k.index_select(0, audio_index), v.index_select(0, audio_index)) for k, v in self.cross]
        self.keys = [cache.index_select(0, row_index) for cache in self.keys]
        self.values = [cache.index_select(0, row_index) for cache in self.values]
        self.active = [self.active[position] for position in keep]

    def cleanup_caching(self) -> None:
        self.cross, self.keys, self.values, self.length, self.active = [], [], [], 0, []

    def _forward(self, new: Tensor, group: int) -> Tensor:
        """Run ``new`` tokens of every row through the decoder; the hidden states after its layer norm."""
        end = self.length + new.shape[1]
        self.reserve(new.shape[0], end)
        dec = self.decoder
        dtype = self.cross[0][0].dtype
        x = (dec.token_embedding(new) + dec.positional_embedding[self.length:end]).to(dtype)
        for layer, block in enumerate(dec.blocks):
            x = x + self._self_attention(block.attn, block.attn_ln(x), layer)
            x = x + self._cross_attention(block.cross_attn, block.cross_attn_ln(x), layer, group)
            x = x + block.mlp(block.mlp_ln(x))
        self.length = end
        return dec.ln(x)  # type: ignore[no-any-return]

    def _start(self, n_audio: int, audio_features: Tensor) -> None:
        self.n_audio = n_audio
        self.active = list(range(n_audio))
        if audio_features.shape[0] != n_audio:  # one row per sequence: keep one per audio
            audio_features = audio_features[:: self.group]
        frames = audio_features.shape[1]
        for block in self.decoder.blocks:
            attn = block.cross_attn
            heads = attn.n_head
            keys = attn.key(audio_features).view(n_audio, frames, heads, -1)
            values = attn.value(audio_features).view(n_audio, frames, heads, -1)
            self.cross.append((keys.permute(0, 2, 3, 1).contiguous(), values.transpose(1, 2).contiguous()))
            self.keys.append(audio_features.new_empty((0, heads, 0, keys.shape[-1])))
            self.values.append(audio_features.new_empty((0, heads, 0, keys.shape[-1])))

    def reserve(self, rows: int, length: int) -> None:
        """Make every self-attention cache hold ``rows`` x ``length``; capacity grows by doubling."""
        capacity = self.keys[0].shape[2]
        if length <= capacity and rows == self.keys[0].shape[0]:
            return
        capacity = max(capacity, _FIRST_CAPACITY)
        while capacity < length:
            capacity *= 2
        for caches in (self.keys, self.values):
            for i, old in enumerate(caches):
                grown = old.new_empty((rows, old.shape[1], capacity, old.shape[3]))
                if self.length:  # rows change only before the first token is cached
                    grown[:, :, : self.length] = old[:, :, : self.length]
                caches[i] = grown

    def _repeat_rows(self, repeat: int) -> None:
        for caches in (self.keys, self.values):
            for i, cache in enumerate(caches):
                caches[i] = cache.repeat_interleave(repeat, dim=0)

    def _self_attention(self, attn: MultiHeadAttention, x: Tensor, layer: int) -> Tensor:
        return attn.out(self.attend_self(attn.query(x), attn.key(x), attn.value(x), layer))  # type: ignore[no-any-return]

    def attend_self(self, q: Tensor, k: Tensor, v: Tensor, layer: int) -> Tensor:
        """Self-attention of the new positions (projected, before ``out``): their keys join the cache."""
        batch, n_new, state = q.shape
        heads = self.decoder.blocks[layer].attn.n_head
        end = self.length + n_new
        q = q.view(batch, n_new, heads, -1).transpose(1, 2)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length:end] = k.view(batch, n_new, heads, -1).transpose(1, 2)
        values[:, :, self.length:end] = v.view(batch, n_new, heads, -1).transpose(1, 2)
        scores = ((q * q.shape[-1] ** -0.5) @ keys[:, :, :end].transpose(-1, -2)).float()
        if n_new > 1:
            scores = scores + self.decoder.mask[self.length:end, :end]
        weights = F.softmax(scores, dim=-1).to(q.dtype)
        return (weights @ values[:, :, :end]).transpose(1, 2).reshape(batch, n_new, state)

    def _cross_attention(self, attn: MultiHeadAttention, x: Tensor, layer: int, group: int) -> Tensor:
        return attn.out(self.attend_cross(attn.query(x), layer, group))  # type: ignore[no-any-return]

    def attend_cross(self, q: Tensor, layer: int, group: int) -> Tensor:
        """Cross-attention of projected queries (before ``out``) to the audio."""
        batch, n_new, state = q.shape
        keys, values = self.cross[layer]
        n_audio, heads = keys.shape[:2]
        # The sequences of one audio share its keys: their queries form one block per audio.
        q = q.view(n_audio, group * n_new, heads, -1).transpose(1, 2)
        scores = ((q * q.shape[-1] ** -0.5) @ keys).float()
        weights = F.softmax(scores, dim=-1).to(q.dtype)
        return (weights @ values).transpose(1, 2).reshape(batch, n_new, state)


def top_k(x: Tensor, k: int, block: int = 128) -> tuple[Tensor, Tensor]:
    """``x.topk(k)`` along the last dimension of a (rows, vocabulary) tensor: the same values and
    indices (ties aside), about 3x faster on the CPU for a beam's few candidates.

    The k largest of a row lie in the k blocks with the largest maxima: any
    other block's elements have k larger ones, one in each of those blocks.
    """
    rows, width = x.shape
    blocks = -(-width // block)
    if blocks <= k:
        return x.topk(k)
    padded = F.pad(x, (0, blocks * block - width), value=-np.inf).view(rows, blocks, block)
    best = padded.amax(dim=-1).topk(k).indices
    candidates = padded.gather(1, best.unsqueeze(-1).expand(rows, k, block)).view(rows, k * block)
    values, where = candidates.topk(k)
    if bool(torch.isneginf(values[:, -1]).any()):  # fewer than k finite: padding could be picked
        return x.topk(k)
    return values, best.gather(1, torch.div(where, block, rounding_mode="floor")) * block + where % block


class BatchedBeamSearch(BeamSearchDecoder):  # type: ignore[misc]
    """whisper's beam search, with the top candidates of every sequence found in one call.

    whisper ranks each sequence's candidates with a ``topk`` and a tensor
    addition per candidate; for a batch of 8 audios x 5 beams that was 240
    small tensor operations a step. Candidates, scores, ranking and
    bookkeeping are whisper's own; the candidates are found by ``top_k``.
    """

    finished_sequences: list[dict[tuple[int, ...], float]] | None

    def update(self, tokens: Tensor, logits: Tensor, sum_logprobs: Tensor) -> tuple[Tensor, bool]:
        if tokens.shape[0] % self.beam_size != 0:
            raise ValueError(f"{tokens.shape}[0] % {self.beam_size} != 0")
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished_sequences is None:
            self.finished_sequences = [{} for _ in range(n_audio)]
        top_logprobs, top_tokens = top_k(F.log_softmax(logits.float(), dim=-1), self.beam_size + 1)
        candidate_scores = (sum_logprobs.unsqueeze(1) + top_logprobs).tolist()
        candidate_tokens, prefixes = top_tokens.tolist(), tokens.tolist()
        next_tokens: list[tuple[int, ...]] = []
        source_indices: list[int] = []
        newly_finished: list[dict[tuple[int, ...], float]] = []
        for audio in range(n_audio):
            scores: dict[tuple[int, ...], float] = {}
            sources: dict[tuple[int, ...], int] = {}
            for row in range(audio * self.beam_size, (audio + 1) * self.beam_size):
                for score, token in zip(candidate_scores[row], candidate_tokens[row], strict=True):
                    sequence = (*prefixes[row], token)
                    scores[sequence], sources[sequence] = score, row
            finished: dict[tuple[int, ...], float] = {}
            kept = 0
            for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
                if sequence[-1] == self.eot:
                    finished[sequence] = scores[sequence]
                    continue
                sum_logprobs[len(next_tokens)] = scores[sequence]
                next_tokens.append(sequence)
                source_indices.append(sources[sequence])
                kept += 1
                if kept == self.beam_size:
                    break
            newly_finished.append(finished)
        tokens = torch.tensor(next_tokens, device=tokens.device)
        self.inference.rearrange_kv_cache(source_indices)
        for candidates, new in zip(self.finished_sequences, newly_finished, strict=True):
            for sequence in sorted(new, key=new.__getitem__, reverse=True):
                if len(candidates) >= self.max_candidates:
                    break
                candidates[sequence] = new[sequence]
        completed = all(len(candidates) >= self.max_candidates for candidates in self.finished_sequences)
        return tokens, completed


class BatchedTimestampRules(ApplyTimestampRules):  # type: ignore[misc]
    """whisper's timestamp rules, with the last rule (timestamps win when their total
    probability beats every text token) computed for all sequences at once, on the logits,
    instead of a log-softmax and two reductions over the vocabulary per sequence."""

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        begin = self.tokenizer.timestamp_begin
        if self.tokenizer.no_timestamps is not None:
            logits[:, self.tokenizer.no_timestamps] = -np.inf
        for row, sampled in enumerate(tokens[:, self.sample_begin:].tolist()):
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
            if last_was_timestamp:  # timestamps come in pairs, except right before end-of-text
                if penultimate_was_timestamp:
                    logits[row, begin:] = -np.inf
                else:
                    logits[row, : self.tokenizer.eot] = -np.inf
            stamps = [token for token in sampled if token >= begin]
            if stamps:  # never backwards, and each segment of non-zero length
                last = stamps[-1] if last_was_timestamp and not penultimate_was_timestamp else stamps[-1] + 1
                logits[row, begin:last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :begin] = -np.inf
            if self.max_initial_timestamp_index is not None:
                logits[:, begin + self.max_initial_timestamp_index + 1:] = -np.inf
        # whisper compares log-probabilities; their normaliser is the same on both sides, so
        # logits compare alike, without a log-softmax over the vocabulary per sequence.
        scores = logits.float()
        timestamps_win = scores[:, begin:].logsumexp(dim=-1) > scores[:, :begin].amax(dim=-1)
        logits[timestamps_win, :begin] = -np.inf


class GroupedDecodingTask(DecodingTask):  # type: ignore[misc]
    """whisper's DecodingTask with ``GroupedCacheInference``, and batched beam search made whole."""

    decoder: Any

    def __init__(self, model: Whisper, options: DecodingOptions,
                 languages: list[str | None] | None = None) -> None:
        super().__init__(model, options)
        self.languages = languages  # one per audio, overriding options.language; None: detect
        self.inference = self._inference(model)
        if isinstance(self.decoder, BeamSearchDecoder):
            self.decoder = BatchedBeamSearch(self.decoder.beam_size, self.decoder.eot, self.inference,
                                             self.decoder.patience)
        for i, rule in enumerate(self.logit_filters):
            if type(rule) is ApplyTimestampRules:
                batched = BatchedTimestampRules.__new__(BatchedTimestampRules)
                batched.__dict__.update(rule.__dict__)
                self.logit_filters[i] = batched

    def _inference(self, model: Whisper) -> Inference:
        return GroupedCacheInference(model, self.n_group, self._finished_audio)

    def _finished_audio(self, tokens: Tensor) -> list[bool]:
        """Per audio: is its search over? Its rows are then left out of every later step."""
        decoder = self.decoder
        if isinstance(decoder, BeamSearchDecoder):
            done = decoder.finished_sequences or []
            return [len(candidates) >= decoder.max_candidates for candidates in done]
        # Greedy and best-of-n sampling: a sequence that ended keeps ending (whisper's GreedyDecoder).
        ended: list[bool] = (tokens[:, -1] == self.tokenizer.eot).view(-1, self.n_group).all(dim=1).tolist()
        return ended

    def _get_audio_features(self, mel: Tensor) -> Any:
        if mel.device.type == "cpu" and mel.shape[0] > 1:
            # On the CPU the encoder is compute-bound at one window: a stacked batch only adds
            # (windows x heads x 1500 x 1500) attention scores to hold, and ran 5-10% slower.
            features = torch.cat([super(GroupedDecodingTask, self)._get_audio_features(mel[i: i + 1])
                                  for i in range(mel.shape[0])])
        else:
            features = super()._get_audio_features(mel)
        if isinstance(features, Tensor) and features.shape[0] > 1 and self.n_group > 1:
            # run() expects a row per sequence and keeps every n_group-th one for its results.
            # Only those rows are written: the others' pages are never touched, so cost no memory.
            rows = features.new_empty((features.shape[0] * self.n_group, *features.shape[1:]))
            rows[:: self.n_group] = features
            features = rows
        return features

    def _detect_language(self, audio_features: Tensor, tokens: Tensor) -> Any:
        if audio_features.shape[0] != tokens.shape[0]:
            audio_features = audio_features[:: self.n_group]
        if self.languages is None or None in self.languages or self.options.task == "lang_id":
            return super()._detect_language(audio_features, tokens)
        if len(self.languages) != tokens.shape[0]:
            raise ValueError(f"{len(self.languages)} languages for {tokens.shape[0]} audios")
        # The language is one token of each sequence's prompt, right after start-of-transcript.
        tokens[:, self.sot_index + 1] = torch.tensor(
            [self.tokenizer.to_language_token(language) for language in self.languages])
        return list(self.languages), None


def decoder_step(states: Sequence[GroupedCacheInference], new_tokens: Sequence[Tensor]) -> list[Tensor]:
    """One token more for every sequence of several decode calls, in one pass of the decoder.

    Every linear layer and the vocabulary projection see all rows at once,
    which is where batching pays; attention runs per decode call, against
    its own caches at its own length. Returns each call's logits (rows, vocabulary).
    """
    decoder = states[0].decoder
    rows = [tokens.shape[0] for tokens in new_tokens]
    for state, count in zip(states, rows, strict=True):
        state.reserve(count, state.length + 1)
    positions = torch.cat([decoder.positional_embedding[state.length].expand(count, -1)
                           for state, count in zip(states, rows, strict=True)])
    dtype = states[0].cross[0][0].dtype
    x = (decoder.token_embedding(torch.cat(list(new_tokens))) + positions.unsqueeze(1)).to(dtype)
    for layer, block in enumerate(decoder.blocks):
        attn, cross = block.attn, block.cross_attn
        h = block.attn_ln(x)
        parts = zip(states, attn.query(h).split(rows), attn.key(h).split(rows), attn.value(h).split(rows),
                    strict=True)
        x = x + attn.out(torch.cat([state.attend_self(q, k, v, layer) for state, q, k, v in parts]))
        parts2 = zip(states, cross.query(block.cross_attn_ln(x)).split(rows), strict=True)
        x = x + cross.out(torch.cat([state.attend_cross(q, layer, state.group) for state, q in parts2]))
        x = x + block.mlp(block.mlp_ln(x))
    hidden = decoder.ln(x)[:, -1]
    logits = (hidden @ decoder.token_embedding.weight.to(hidden.dtype).T).float()
    for state in states:  # only once the whole pass has succeeded: a failed one may be run again
        state.length += 1
    return list(logits.split(rows))


class PromptLogits:
    """A prompt's logits, projected on the worker at the two positions whisper's loop reads,
    in one pass over the vocabulary matrix."""

    def __init__(self, logits: ProjectedLogits, sot_index: int) -> None:
        if logits.rows is not None:
            raise ValueError("a decode call of one audio keeps all its rows")
        self.tokens = logits.hidden.shape[1]
        positions = sorted({sot_index, self.tokens - 1})
        x = logits.hidden[:, positions]
        projected = (x @ logits.embedding.to(x.dtype).T).float()
        if logits.repeat > 1:
            projected = projected.repeat_interleave(logits.repeat, dim=0)
        self.at = {position: projected[:, i] for i, position in enumerate(positions)}

    def __getitem__(self, key: tuple[slice, int]) -> Tensor:
        rows, position = key
        if rows != slice(None) or not isinstance(position, int):
            raise IndexError("only logits[:, position] is computed")
        return self.at[position % self.tokens]


class SteppedInference(Inference):  # type: ignore[misc]
    """One decode call's inference inside a continuous batch (batching.py).

    Its caches are its own (a ``GroupedCacheInference`` of one audio); its
    prompt runs on the worker on its own, and each later token in the
    batch's shared decoder pass (``decoder_step``).
    """

    def __init__(self, model: Whisper, group: int, sot_index: int, steps: DecoderSteps) -> None:
        self.state = GroupedCacheInference(model, group)
        self.sot_index = sot_index
        self.steps = steps
        self.decoding = False

    def logits(self, tokens: Tensor, audio_features: Tensor) -> PromptLogits | Tensor:
        if not self.decoding:
            self.decoding = True
            self.steps.begin_decoding()
            return self.steps.call(lambda: PromptLogits(self.state.logits(tokens, audio_features),
                                                        self.sot_index))
        # (rows, 1, vocabulary): whisper's loop reads logits[:, -1]
        return self.steps.step(self.state, tokens[:, self.state.length:]).unsqueeze(1)

    def rearrange_kv_cache(self, source_indices: list[int]) -> None:
        self.state.rearrange_kv_cache(source_indices)

    def cleanup_caching(self) -> None:
        self.state.cleanup_caching()
        if self.decoding:
            self.decoding = False
            self.steps.end_decoding()


class SteppedDecodingTask(GroupedDecodingTask):
    """whisper's DecodingTask for one window, its model work done by the continuous batch's worker."""

    def __init__(self, model: Whisper, options: DecodingOptions, steps: DecoderSteps) -> None:
        self.steps = steps
        super().__init__(model, options)

    def _inference(self, model: Whisper) -> Inference:
        return SteppedInference(model, self.n_group, self.sot_index, self.steps)

    def _get_audio_features(self, mel: Tensor) -> Any:
        return self.steps.call(lambda: super(SteppedDecodingTask, self)._get_audio_features(mel))


def decode(model: Whisper, mel: Tensor, options: DecodingOptions,
           languages: list[str | None] | None = None) -> DecodingResult | list[DecodingResult]:
    """whisper.decoding.decode, on the grouped caches: one window (n_mels, frames) or a batch.

    ``languages``, one per audio of a batch, lets audios of different languages share it.
    """
    single = mel.ndim == 2
    with torch.no_grad():
        results: list[DecodingResult] = GroupedDecodingTask(model, options, languages).run(
            mel.unsqueeze(0) if single else mel)
    return results[0] if single else results


def decode_stepped(model: Whisper, mel: Tensor, options: DecodingOptions,
                   steps: DecoderSteps) -> DecodingResult:
    """Decode one window (n_mels, frames) as a member of the continuous batch ``steps``."""
    with torch.no_grad():
        result: DecodingResult = SteppedDecodingTask(model, options, steps).run(mel.unsqueeze(0))[0]
    return result
