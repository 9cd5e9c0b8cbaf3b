"""One 30 s window's search on the host: greedy, sampling and beam search, whisper's bookkeeping.

A ``WindowSearch`` holds the sequences of one decode of one window at one
temperature: a single greedy sequence, ``best_of`` samples, or ``beam_size``
beams. Before each pass it says which of whisper's rules bind each of its
rows (``constraints``: a blank start, timestamps in pairs and never
backwards), as three numbers a row that token_choice.py applies on the
device; after the pass it takes the tokens chosen there (``take_greedy``,
``take_beams``). A search never touches a cache itself: a beam search
reports which old row each new row continues, and the loop moves the caches.

Everything here reproduces whisper 20250625's ``DecodingTask`` for the
options the server uses (``suppress_tokens="-1"``, ``suppress_blank``,
``max_initial_timestamp=1.0``, no length penalty, patience 1), so greedy
results are whisper's tokens; tests/test_decoding_loop.py holds it to that.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from whisper.tokenizer import Tokenizer

from asr_server.engine.token_choice import TEXT_FREE, TEXT_NONE, TEXT_ONLY_END, TO_THE_END, Rules

NO_STAMP = -1


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


class WindowSearch:
    """The sequences of one window's decode at one temperature, from the prompt's logits on."""

    def __init__(self, spec: SearchSpec, initial_tokens: list[int], sot_index: int, sample_len: int,
                 n_ctx: int, generator: torch.Generator | None = None, forced: Sequence[int] = (),
                 forced_stamp: int = NO_STAMP) -> None:
        """``generator``: what a sampled search draws from (None: torch's global generator).

        ``forced``: the start of the window's text, given rather than decoded (a live item's
        committed words, from a timestamp on): read with the prompt in one pass, and then taken as
        if the search had chosen it. whisper's rules see it as sampled text (``forced_stamp``: its
        last timestamp token), so they bind what follows as they would have; the result holds it,
        but its log-probabilities are not counted (they were never chosen).
        """
        self.spec = spec
        self.generator = generator
        self.sample_begin = len(initial_tokens)  # where the window's own text starts (forced or not)
        self.forced = len(forced)
        self.sot_index = sot_index
        self.sample_len = sample_len
        self.n_ctx = n_ctx
        self.initial_tokens = [*initial_tokens, *forced]  # all the prompt pass reads
        self.sequences = [list(self.initial_tokens) for _ in range(spec.rows)]
        self.sum_logprobs = [0.0] * spec.rows
        self.last_stamps = [forced_stamp] * spec.rows  # per row: its last timestamp token so far
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

    @property
    def first_choice_at(self) -> int:
        """The position whose logits choose the first token decoded: the prompt pass's last."""
        return len(self.initial_tokens) - 1

    def last_tokens(self) -> list[int]:
        return [sequence[-1] for sequence in self.sequences]

    @property
    def kind(self) -> int:
        """Where its rows go in a pass: beam searches first, then greedy ones, then sampled ones."""
        return 0 if self.spec.beam_size is not None else 1 if self.spec.temperature == 0 else 2

    def constraints(self, rules: Rules) -> list[tuple[int, int, int]]:
        """Per row, whisper's timestamp rules as token_choice.py applies them: the text rule, and the
        timestamps ``[stamp_from, stamp_to)`` the row may not take next."""
        begin = rules.timestamp_begin
        if self.length == self.sample_begin:  # a timestamp first, and at most 1 s in
            return [(TEXT_NONE, rules.max_initial_timestamp + 1, TO_THE_END)] * self.rows
        found = []
        for sequence, last_stamp in zip(self.sequences, self.last_stamps, strict=True):
            last_was_timestamp = sequence[-1] >= begin
            penultimate_was_timestamp = (len(sequence) - self.sample_begin < 2 or sequence[-2] >= begin)
            if last_was_timestamp and penultimate_was_timestamp:  # a pair just closed: text or the end
                found.append((TEXT_FREE, begin, TO_THE_END))
            elif last_was_timestamp:  # its pair's second half, or the end; never backwards
                found.append((TEXT_ONLY_END, begin, last_stamp))
            elif last_stamp != NO_STAMP:  # never backwards, and each segment of non-zero length
                found.append((TEXT_FREE, begin, last_stamp + 1))
            else:
                found.append((TEXT_FREE, begin, begin))
        return found

    def take_greedy(self, tokens: list[int], logprobs: list[float], rules: Rules) -> None:
        """whisper's GreedyDecoder.update, for argmax and sampled tokens alike."""
        eot = rules.eot
        for row, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            sequence = self.sequences[row]
            if sequence[-1] == eot:
                token = eot
            else:
                self.sum_logprobs[row] = _add32(self.sum_logprobs[row], logprob)
            sequence.append(token)
            if token >= rules.timestamp_begin:
                self.last_stamps[row] = token
        self._stepped(all(sequence[-1] == eot for sequence in self.sequences))

    def take_beams(self, candidate_logprobs: list[list[float]], candidate_tokens: list[list[int]],
                   rules: Rules) -> list[int]:
        """whisper's BeamSearchDecoder.update; returns, per new row, the row it continues."""
        beam, eot = self.rows, rules.eot
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
        self.last_stamps = [sequence[-1] if sequence[-1] >= rules.timestamp_begin
                            else self.last_stamps[sources[sequence]] for sequence in kept]
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
        best = int(np.argmax([logprob / max(len(tokens) - self.forced, 1)
                              for tokens, logprob in zip(sampled, sums, strict=True)]))
        tokens = sampled[best]
        return WindowResult(
            tokens=tuple(tokens), text=tokenizer.decode(tokens).strip(),
            avg_logprob=sums[best] / (len(tokens) - self.forced + 1), no_speech_prob=self.no_speech_prob,
            temperature=self.spec.temperature)


def _add32(total: float, logprob: float) -> float:
    """whisper sums log-probabilities in a float32 tensor: the same rounding, the same rankings."""
    return float(np.float32(total) + np.float32(logprob))
