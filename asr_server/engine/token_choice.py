"""whisper's logit rules and its token choices, on the device, for every row of a pass at once.

One decoder pass gives a logits tensor of (rows, vocabulary). ``choose``
applies whisper 20250625's rules to all rows together: the suppressed tokens,
timestamps at the start (at most ``MAX_INITIAL_TIMESTAMP_S`` in), timestamps
in pairs and never backwards, timestamps when their total probability beats
every text token. Then it picks each row's next token (argmax, or a sample at
the row's temperature) and, for beam searches, each row's best candidates.
Everything it returns is packed in one float64 tensor, so the host reads the
device once per pass.

What differs per row comes from the host, already in device tensors
(``RowRules``, made by pass_plan.py from each search's tokens): which text
tokens a row may not take (``text_rule``) and which timestamps
(``stamp_from`` .. ``stamp_to``). Nothing here reads the device: no
``.item()``, no boolean indexing, no ``nonzero``, no argument validation
that syncs (``Categorical``, ``multinomial``'s own check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from whisper.tokenizer import Tokenizer

MAX_INITIAL_TIMESTAMP_S = 1.0
TO_THE_END = 1 << 40  # ``stamp_to`` for "every timestamp from ``stamp_from`` on"

# text_rule values: which tokens below the first timestamp a row may not take
TEXT_FREE = 0
TEXT_ONLY_END = 1  # after one timestamp: another timestamp or end-of-text (its pair), no text
TEXT_NONE = 2  # the first token: a timestamp, nothing else


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
        precision = 30.0 / n_audio_ctx  # seconds per timestamp token
        self.max_initial_timestamp = self.timestamp_begin + round(MAX_INITIAL_TIMESTAMP_S / precision)
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def tensors(self, device: torch.device, vocabulary: int) -> tuple[Tensor, Tensor]:
        """The suppressed tokens' indices and the timestamp tokens' numbers, made once per device."""
        if device not in self._on:
            self._on[device] = (torch.tensor(self.suppress, device=device),
                                torch.arange(self.timestamp_begin, vocabulary, device=device))
        return self._on[device]


@dataclass(frozen=True)
class RowRules:
    """Per row of a pass: its rules and how it chooses. Rows are ordered beam searches first, then
    greedy ones, then sampled ones, so each kind is one slice."""

    text_rule: Tensor  # (rows,) TEXT_FREE, TEXT_ONLY_END or TEXT_NONE
    stamp_from: Tensor  # (rows,) timestamps in [stamp_from, stamp_to) are not allowed
    stamp_to: Tensor
    temperatures: Tensor  # (rows - sampling_from,) float32
    beam_rows: int  # rows [0, beam_rows) are beam searches'
    sampling_from: int  # rows [sampling_from, rows) are sampled
    candidates: int  # how many best tokens each beam row reports (its search's beam + 1, the widest)
    draws: tuple[tuple[torch.Generator | None, int], ...] = ()  # the sampled rows: per search, its
    # request's generator and its rows, in row order (none: torch's global generator for them all)


def choose(rules: Rules, logits: Tensor, rows: RowRules) -> Tensor:
    """Apply the rules to ``logits`` (rows, vocabulary), float32, in place, and choose.

    Returns one float64 tensor: the chosen token of every row, its log-probability, then the
    beam rows' ``candidates`` best log-probabilities and their tokens, row by row.
    """
    eot, begin = rules.eot, rules.timestamp_begin
    suppress, stamps = rules.tensors(logits.device, logits.shape[-1])
    logits.index_fill_(1, suppress, -torch.inf)
    text, tail, timestamps = logits[:, :eot], logits[:, eot:begin], logits[:, begin:]
    timestamps.masked_fill_((stamps >= rows.stamp_from.unsqueeze(1)) & (stamps < rows.stamp_to.unsqueeze(1)),
                            -torch.inf)
    # Timestamps win when their total probability beats every text token's; whisper compares
    # log-probabilities, whose normaliser is the same on both sides, so logits compare alike. The
    # best text token is read before the row's own text rule masks it, and the rule applied to it.
    best_text = torch.where(rows.text_rule == TEXT_FREE, torch.maximum(text.amax(dim=-1), tail.amax(dim=-1)),
                            torch.where(rows.text_rule == TEXT_ONLY_END, tail.amax(dim=-1), -torch.inf))
    timestamps_win = timestamps.logsumexp(dim=-1) > best_text
    text.masked_fill_(((rows.text_rule != TEXT_FREE) | timestamps_win).unsqueeze(1), -torch.inf)
    tail.masked_fill_(((rows.text_rule == TEXT_NONE) | timestamps_win).unsqueeze(1), -torch.inf)
    logprobs = F.log_softmax(logits, dim=-1)

    chosen = logits.argmax(dim=-1)
    if rows.sampling_from < logits.shape[0]:
        sampled = logits[rows.sampling_from:] / rows.temperatures.unsqueeze(1)
        chosen[rows.sampling_from:] = sample(sampled, rows.draws)
    parts = [chosen.double(), logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1).double()]
    if rows.beam_rows:
        beam = logprobs[: rows.beam_rows]
        values, tokens = beam.topk(rows.candidates) if beam.is_cuda else top_k(beam, rows.candidates)
        parts += [values.double().flatten(), tokens.double().flatten()]
    return torch.cat(parts)


def sample(logits: Tensor, draws: Sequence[tuple[torch.Generator | None, int]] = ()) -> Tensor:
    """One token per row, drawn as whisper's ``Categorical(logits=logits).sample()`` draws it (from
    the same generator, the same tokens), without the argument checks that read the device.

    ``torch.multinomial`` draws one sample by the exponential race, ``argmax(p / Exp(1))``, after a
    check of ``p`` that reads the device; the race alone is the same draw. ``draws`` splits the rows
    by request, each drawing from its own generator (``None``: torch's global one), so what one
    request samples does not depend on what else shares the pass.
    """
    probs = F.softmax(logits - logits.logsumexp(dim=-1, keepdim=True), dim=-1)  # Categorical's probs
    noise = torch.empty_like(probs)
    if not draws:
        noise.exponential_(1)
    at = 0
    for generator, rows in draws:
        noise[at: at + rows].exponential_(1, generator=generator)
        at += rows
    return (probs / noise).argmax(dim=-1)


def top_k(x: Tensor, k: int, block: int = 128) -> tuple[Tensor, Tensor]:
    """``x.topk(k)`` along the last dimension of a (rows, vocabulary) tensor: the same values and
    indices (ties aside), about 3x faster on the CPU for a beam's few candidates.

    The k largest of a row lie in the k blocks with the largest maxima, or in the tail that fills
    no whole block: any other block's elements have k larger ones, one in each of those blocks.
    """
    rows, width = x.shape
    blocks = width // block
    if blocks <= k or rows == 0:
        return x.topk(k)
    whole = x[:, : blocks * block].view(rows, blocks, block)
    best = whole.amax(dim=-1).topk(k).indices
    candidates = torch.cat([whole.gather(1, best.unsqueeze(-1).expand(rows, k, block)).view(rows, k * block),
                            x[:, blocks * block:]], dim=1)
    values, where = candidates.topk(k)
    in_block = best.gather(1, torch.div(where, block, rounding_mode="floor").clamp(max=k - 1))
    return values, torch.where(where < k * block, in_block * block + where % block,
                               where - k * block + blocks * block)
