"""One decoder pass's host side: what every row feeds and which rules bind it, sent in one copy; the
pass's choices read back in one read.

The loop's state lives on the host: the searches' tokens, the slots' lengths, the beams' moves not
yet made in the cache. ``make_plan`` packs everything of it that the pass needs into one int64
array and sends it to the device in one copy (from pinned memory on CUDA, without waiting); every
index and rule the pass uses is a view of that one tensor. After the pass, ``advance`` chooses
every row's token on the device (token_choice.py), reads the packed choices back once
(``read_back``), and moves every search one token on.

Rows go in the order the searches are given, which must be beam searches first, then greedy, then
sampled ones (``WindowSearch.kind``): each kind is then one slice of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asr_server.engine.kv_cache import Caches
from asr_server.engine.search import WindowSearch
from asr_server.engine.token_choice import RowRules, Rules, choose


@dataclass(frozen=True)
class Entry:
    """One window's part of a pass."""

    slot: int
    search: WindowSearch
    moves: Sequence[int] | None = None  # beam search: the old row each row continues, not yet moved


@dataclass(frozen=True)
class Plan:
    """A pass's host facts, and its device tensors, all views of one copy."""

    entries: tuple[Entry, ...]
    lengths: tuple[int, ...]  # per entry: tokens in its slot's cache before this pass
    tokens: Tensor  # (rows,) each row's last token, fed now
    slot_of_row: Tensor
    row_in_slot: Tensor
    position: Tensor
    used_slots: int  # batched attention reads slots [0, used_slots)
    slot_ends: Tensor  # (used_slots,) positions each slot attends to (1 for one outside the pass)
    moved: int  # how many rows the beams moved since the last pass
    move_slot: Tensor  # (moved,) row move_target of move_slot continues its row move_origin
    move_target: Tensor
    move_origin: Tensor
    move_length: int  # tokens of history a move copies: the longest moved slot's
    rules: RowRules

    @property
    def counts(self) -> list[int]:
        return [entry.search.rows for entry in self.entries]


def make_plan(caches: Caches, rules: Rules, entries: Sequence[Entry]) -> Plan:
    kinds = [entry.search.kind for entry in entries]
    if kinds != sorted(kinds):
        raise ValueError("a pass takes beam searches first, then greedy ones, then sampled ones")
    lengths = tuple(caches.lengths[entry.slot] for entry in entries)
    rows = sum(entry.search.rows for entry in entries)
    feeds = np.empty((7, rows), dtype=np.int64)  # token, slot, row in slot, position, three rules
    at = 0
    for entry, length in zip(entries, lengths, strict=True):
        search, end = entry.search, at + entry.search.rows
        feeds[0, at:end] = search.last_tokens()
        feeds[1, at:end] = entry.slot
        feeds[2, at:end] = np.arange(search.rows)
        feeds[3, at:end] = length
        feeds[4:, at:end] = np.array(search.constraints(rules), dtype=np.int64).T
        at = end
    beam_rows = sum(e.search.rows for e in entries if e.search.kind == 0)
    sampling_from = rows - sum(e.search.rows for e in entries if e.search.kind == 2)
    temperatures = np.array([e.search.spec.temperature for e in entries if e.search.kind == 2
                             for _ in range(e.search.rows)], dtype=np.float64)
    used = max((entry.slot for entry in entries), default=-1) + 1
    ends = np.ones(used, dtype=np.int64)
    for entry, length in zip(entries, lengths, strict=True):
        ends[entry.slot] = length + 1
    moves = [(entry.slot, target, origin, length) for entry, length in zip(entries, lengths, strict=True)
             for target, origin in enumerate(entry.moves or ()) if target != origin]
    move_array = np.array([move[:3] for move in moves], dtype=np.int64).reshape(-1, 3).T
    packed = np.concatenate([feeds.ravel(), temperatures.view(np.int64), ends, move_array.ravel()])
    device = upload(packed, caches.device)
    row_part, rest = device[: 7 * rows].view(7, rows), device[7 * rows:]
    sampled, rest = rest[: len(temperatures)], rest[len(temperatures):]
    slot_ends, move_part = rest[:used], rest[used:].view(3, len(moves))
    candidates = max((e.search.rows + 1 for e in entries if e.search.kind == 0), default=0)
    return Plan(
        entries=tuple(entries), lengths=lengths, tokens=row_part[0], slot_of_row=row_part[1],
        row_in_slot=row_part[2], position=row_part[3], used_slots=used, slot_ends=slot_ends,
        moved=len(moves), move_slot=move_part[0], move_target=move_part[1], move_origin=move_part[2],
        move_length=max((move[3] for move in moves), default=0),
        rules=RowRules(text_rule=row_part[4], stamp_from=row_part[5], stamp_to=row_part[6],
                       temperatures=sampled.view(torch.float64).float(), beam_rows=beam_rows,
                       sampling_from=sampling_from, candidates=candidates))


def upload(packed: np.ndarray, device: torch.device) -> Tensor:
    """The pass's one copy to the device: from pinned memory on CUDA, so the host need not wait."""
    host = torch.from_numpy(packed)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def read_back(picks: Tensor) -> list[float]:
    """The pass's one read from the device."""
    values: list[float] = picks.tolist()
    return values


def advance(rules: Rules, plan: Plan, logits: Tensor, no_speech: Tensor | None = None
            ) -> list[list[int] | None]:
    """Apply the rules to ``logits`` (the plan's rows), choose, and move every search one token on.

    ``no_speech``, a window's first pass only: its no-speech probability, read in the same read.
    Returns, per entry, the rows its cache must be moved to (beam search), or None.
    """
    picks = choose(rules, logits, plan.rules)
    if no_speech is not None:
        picks = torch.cat([picks, no_speech.double().view(1)])
    values = read_back(picks)
    rows, width = sum(plan.counts), plan.rules.candidates
    chosen, chosen_logprobs = [int(v) for v in values[:rows]], values[rows: 2 * rows]
    top = values[2 * rows: 2 * rows + 2 * plan.rules.beam_rows * width]
    top_values, top_tokens = top[: len(top) // 2], [int(v) for v in top[len(top) // 2:]]
    moves: list[list[int] | None] = []
    at = 0
    for entry in plan.entries:
        search, end = entry.search, at + entry.search.rows
        if no_speech is not None:
            search.no_speech_prob = values[-1]
        if search.kind != 0:
            search.take_greedy(chosen[at:end], chosen_logprobs[at:end], rules)
            moves.append(None)
        else:
            wanted = search.rows + 1
            moves.append(search.take_beams(
                [top_values[row * width: row * width + wanted] for row in range(at, end)],
                [top_tokens[row * width: row * width + wanted] for row in range(at, end)], rules))
        at = end
    return moves
