"""One 30 s window's search, without the model: whisper's logit rules, greedy, sampling and beam search.

A ``WindowSearch`` holds the sequences of one decode of one window at one
temperature: a single greedy sequence, ``best_of`` samples, or ``beam_size``
beams. The decoding loop (decoding_loop.py) runs the model and hands every
search of the batch its rows of one logits tensor; ``advance_all`` applies
whisper's rules to all of them at once (suppressed tokens, a blank start,
timestamps in pairs and never backwards, timestamps when their total
probability wins) and moves each search one token on, syncing with the
device once per pass. A search never touches a cache itself: a beam search
reports which old row each new row continues, and the loop moves the caches.

Everything here reproduces whisper 20250625's ``DecodingTask`` for the
options the server uses (``suppress_tokens="-1"``, ``suppress_blank``,
``max_initial_timestamp=1.0``, no length penalty, patience 1), so greedy
results are whisper's tokens; tests/test_decoding_loop.py holds it to that.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.tokenizer import Tokenizer

MAX_INITIAL_TIMESTAMP_S = 1.0


@dataclass(frozen=True)
class SearchSpec:
    """How one window is decoded at one temperature."""

    temperature: float
    beam_size: int | None = None  # beam search (temperature 0 only)
    best_of: int | None = None  # independent samples (temperature > 0)

    @property
    def rows(self) -> int:
        return self.beam_size or self.best_of or 1


@dataclass(frozen=True)
class WindowResult:
    """What whisper's ``DecodingResult`` says of a window, the fields its transcribe loop reads."""

    tokens: tuple[int, ...]  # sampled tokens, without the prompt and the end of text
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float

    @property
    def compression_ratio(self) -> float:
        data = self.text.encode("utf-8")
        return len(data) / len(zlib.compress(data)) if data else 0.0


class Rules:
    """The logit rules of one tokenizer's task, shared by every search of the batch."""

    def __init__(self, tokenizer: Tokenizer, n_audio_ctx: int) -> None:
        self.eot = tokenizer.eot
        self.timestamp_begin = tokenizer.timestamp_begin
        self.no_timestamps = tokenizer.no_timestamps
        self.no_speech = tokenizer.no_speech
        specials = [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                    tokenizer.sot_lm, tokenizer.no_timestamps]
        if tokenizer.no_speech is not None:
            specials.append(tokenizer.no_speech)
        self.suppress = sorted({*tokenizer.non_speech_tokens, *specials})
        self.blank = [*tokenizer.encode(" "), tokenizer.eot]
        precision = 30.0 / n_audio_ctx  # seconds per timestamp token
        self.max_initial_timestamp = self.timestamp_begin + round(MAX_INITIAL_TIMESTAMP_S / precision)


class WindowSearch:
    """The sequences of one window's decode at one temperature, from the prompt's logits on."""

    def __init__(self, spec: SearchSpec, initial_tokens: list[int], sot_index: int, sample_len: int,
                 n_ctx: int) -> None:
        self.spec = spec
        self.sample_begin = len(initial_tokens)
        self.sot_index = sot_index
        self.sample_len = sample_len
        self.n_ctx = n_ctx
        self.initial_tokens = list(initial_tokens)
        self.sequences = [list(initial_tokens) for _ in range(spec.rows)]
        self.sum_logprobs = [0.0] * spec.rows
        self.finished: dict[tuple[int, ...], float] = {}  # beam search: ended sequences, by score
        self.no_speech_prob = float("nan")
        self.steps = 0
        self.done = False

    @property
    def rows(self) -> int:
        return self.spec.rows

    @property
    def length(self) -> int:
        """Tokens per row, all rows alike: the next pass feeds each row's last one."""
        return len(self.sequences[0])

    def last_tokens(self) -> list[int]:
        return [sequence[-1] for sequence in self.sequences]

    def begin(self, rules: Rules, sot_logits: Tensor) -> None:
        """Read the no-speech probability from the prompt's logits at start-of-transcript."""
        if rules.no_speech is not None:
            self.no_speech_prob = float(sot_logits.float().softmax(dim=-1)[rules.no_speech])

    def apply_rules(self, rules: Rules, logits: Tensor) -> None:
        """whisper's blank and timestamp rules on this search's rows (suppression is done batched)."""
        begin = rules.timestamp_begin
        if self.length == self.sample_begin:
            logits[:, rules.blank] = -np.inf
            logits[:, :begin] = -np.inf
            logits[:, rules.max_initial_timestamp + 1:] = -np.inf
            return
        for row, sequence in enumerate(self.sequences):
            sampled = sequence[self.sample_begin:]
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
            if last_was_timestamp:  # timestamps come in pairs, except right before end-of-text
                if penultimate_was_timestamp:
                    logits[row, begin:] = -np.inf
                else:
                    logits[row, : rules.eot] = -np.inf
            stamps = [token for token in sampled if token >= begin]
            if stamps:  # never backwards, and each segment of non-zero length
                last = stamps[-1] if last_was_timestamp and not penultimate_was_timestamp else stamps[-1] + 1
                logits[row, begin:last] = -np.inf

    def take_greedy(self, tokens: list[int], logprobs: list[float], eot: int) -> None:
        """whisper's GreedyDecoder.update, for argmax and sampled tokens alike."""
        for row, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            sequence = self.sequences[row]
            if sequence[-1] == eot:
                token = eot
            else:
                self.sum_logprobs[row] = _add32(self.sum_logprobs[row], logprob)
            sequence.append(token)
        self._stepped(all(sequence[-1] == eot for sequence in self.sequences))

    def take_beams(self, candidate_logprobs: list[list[float]], candidate_tokens: list[list[int]],
                   eot: int) -> list[int]:
        """whisper's BeamSearchDecoder.update; returns, per new row, the row it continues."""
        beam = self.rows
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], int] = {}
        for row, (logprobs, tokens) in enumerate(zip(candidate_logprobs, candidate_tokens, strict=True)):
            prefix = tuple(self.sequences[row])
            for logprob, token in zip(logprobs, tokens, strict=True):
                sequence = (*prefix, token)
                scores[sequence], sources[sequence] = _add32(self.sum_logprobs[row], logprob), row
        kept: list[tuple[int, ...]] = []
        newly_finished: dict[tuple[int, ...], float] = {}
        for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
            if sequence[-1] == eot:
                newly_finished[sequence] = scores[sequence]
                continue
            kept.append(sequence)
            if len(kept) == beam:
                break
        self.sequences = [list(sequence) for sequence in kept]
        self.sum_logprobs = [scores[sequence] for sequence in kept]
        for sequence in sorted(newly_finished, key=newly_finished.__getitem__, reverse=True):
            if len(self.finished) >= beam:
                break
            self.finished[sequence] = newly_finished[sequence]
        self._stepped(len(self.finished) >= beam)
        return [sources[sequence] for sequence in kept]

    def _stepped(self, completed: bool) -> None:
        self.steps += 1
        self.done = completed or self.steps >= self.sample_len or self.length > self.n_ctx

    def result(self, tokenizer: Tokenizer) -> WindowResult:
        """whisper's finalize and maximum-likelihood ranking (length-normalised, no penalty)."""
        eot = tokenizer.eot
        if self.spec.beam_size is not None:
            candidates = dict(self.finished)
            if len(candidates) < self.rows:  # not enough ended: the best unfinished ones count too
                for row in np.argsort(self.sum_logprobs)[::-1]:
                    candidates[(*self.sequences[row], eot)] = self.sum_logprobs[row]
                    if len(candidates) >= self.rows:
                        break
            sequences, sums = list(candidates), list(candidates.values())
        else:
            sequences, sums = [(*sequence, eot) for sequence in self.sequences], self.sum_logprobs
        sampled = [list(sequence[self.sample_begin: sequence.index(eot, self.sample_begin)])
                   for sequence in sequences]
        best = int(np.argmax([logprob / max(len(tokens), 1)
                              for tokens, logprob in zip(sampled, sums, strict=True)]))
        tokens = sampled[best]
        return WindowResult(
            tokens=tuple(tokens), text=tokenizer.decode(tokens).strip(),
            avg_logprob=sums[best] / (len(tokens) + 1), no_speech_prob=self.no_speech_prob,
            temperature=self.spec.temperature)


def _add32(total: float, logprob: float) -> float:
    """whisper sums log-probabilities in a float32 tensor: the same rounding, the same rankings."""
    return float(np.float32(total) + np.float32(logprob))


def advance_all(rules: Rules, searches: list[WindowSearch], logits: Tensor) -> list[list[int] | None]:
    """Apply the rules and move every search one token on; ``logits`` holds their rows in order.

    Returns, per search, the rows its caches must be rearranged to (beam search), or None.
    """
    logits[:, rules.suppress] = -np.inf
    offsets = np.cumsum([0, *(search.rows for search in searches)]).tolist()
    for search, start in zip(searches, offsets, strict=False):
        search.apply_rules(rules, logits[start: start + search.rows])
    # Timestamps win when their total probability beats every text token; whisper compares
    # log-probabilities, whose normaliser is the same on both sides, so logits compare alike.
    begin = rules.timestamp_begin
    timestamps_win = logits[:, begin:].logsumexp(dim=-1) > logits[:, :begin].amax(dim=-1)
    logits[timestamps_win, :begin] = -np.inf
    logprobs = F.log_softmax(logits, dim=-1)

    chosen = logits.argmax(dim=-1)
    sampling = [(search, start) for search, start in zip(searches, offsets, strict=False)
                if search.spec.temperature > 0]
    for search, start in sampling:
        rows = logits[start: start + search.rows] / search.spec.temperature
        chosen[start: start + search.rows] = torch.distributions.Categorical(logits=rows).sample()  # type: ignore[no-untyped-call]
    chosen_logprobs = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1)
    beams = [(search, start) for search, start in zip(searches, offsets, strict=False)
             if search.spec.beam_size is not None]
    beam_rows = [row for search, start in beams for row in range(start, start + search.rows)]
    top_values, top_tokens = (top_k(logprobs[beam_rows], max(s.rows for s, _ in beams) + 1)
                              if beams else (logprobs[:0], chosen[:0].unsqueeze(1)))
    # One sync with the device for the whole pass.
    chosen_list, chosen_lp = chosen.tolist(), chosen_logprobs.tolist()
    top_values_list, top_tokens_list = top_values.tolist(), top_tokens.tolist()

    moves: list[list[int] | None] = []
    beam_at = 0
    for search, start in zip(searches, offsets, strict=False):
        end = start + search.rows
        if search.spec.beam_size is None:
            search.take_greedy(chosen_list[start:end], chosen_lp[start:end], rules.eot)
            moves.append(None)
            continue
        width = search.rows + 1
        values = [row[:width] for row in top_values_list[beam_at: beam_at + search.rows]]
        tokens = [row[:width] for row in top_tokens_list[beam_at: beam_at + search.rows]]
        beam_at += search.rows
        moves.append(search.take_beams(values, tokens, rules.eot))
    return moves


def top_k(x: Tensor, k: int, block: int = 128) -> tuple[Tensor, Tensor]:
    """``x.topk(k)`` along the last dimension of a (rows, vocabulary) tensor: the same values and
    indices (ties aside), about 3x faster on the CPU for a beam's few candidates.

    The k largest of a row lie in the k blocks with the largest maxima: any
    other block's elements have k larger ones, one in each of those blocks.
    """
    rows, width = x.shape
    blocks = -(-width // block)
    if blocks <= k or rows == 0:
        return x.topk(k)
    padded = F.pad(x, (0, blocks * block - width), value=-np.inf).view(rows, blocks, block)
    best = padded.amax(dim=-1).topk(k).indices
    candidates = padded.gather(1, best.unsqueeze(-1).expand(rows, k, block)).view(rows, k * block)
    values, where = candidates.topk(k)
    if bool(torch.isneginf(values[:, -1]).any()):  # fewer than k finite: padding could be picked
        return x.topk(k)
    return values, best.gather(1, torch.div(where, block, rounding_mode="floor")) * block + where % block
