"""One decoder pass's host side: what every row feeds and which rules bind it, sent in one copy; the
pass's choices read back in one read.

The loop's state lives on the host: the searches' tokens, the slots' lengths, the beams' moves not
yet made in the cache. ``make_plan`` packs everything of it that the pass needs into one int64
array and sends it to the device in one copy (from pinned memory on CUDA, without waiting); every
index and rule the pass uses is a view of that one tensor. After the pass, ``advance`` chooses
every row's token on the device (token_choice.py), reads the packed choices back once
(``read_back``), and moves every search one token on.

Rows go in the order the searches are given, which must be beam searches first, then greedy, then
sampled ones (``WindowSearch.kind``): each kind is then one slice of the logits. With ``pad_to``
(a CUDA graph's bucket, cuda_graphs.py) the feed has that many rows, the spare ones in the cache's
scratch slot, and names every slot: the fixed shape a graph replays.
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
class Feed:
    """What the decoder pass itself reads, as device tensors: one row per sequence, padded rows
    (a CUDA graph's bucket) writing only into the cache's scratch slot."""

    tokens: Tensor  # (rows,) each row's last token, fed now
    slot_of_row: Tensor
    row_in_slot: Tensor
    position: Tensor  # where the row's token goes in its slot
    slot_ends: Tensor  # (slots read,) positions each slot attends to (1 for one outside the pass)

    @property
    def rows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def slots_read(self) -> int:
        return int(self.slot_ends.shape[0])


@dataclass(frozen=True)
class Plan:
    """A pass's host facts, and its device tensors, all views of one copy."""

    entries: tuple[Entry, ...]
    lengths: tuple[int, ...]  # per entry: tokens in its slot's cache before this pass
    feed: Feed
    static: Tensor  # the feed's storage, in the layout of a CUDA graph's inputs (``padded``)
    padded: bool  # the feed has a fixed number of rows and reads every slot: a graph can replay it
    moved: int  # how many rows the beams moved since the last pass
    move_slot: Tensor  # (moved,) row move_target of move_slot continues its row move_origin
    move_target: Tensor
    move_origin: Tensor
    move_length: int  # tokens of history a move copies: the longest moved slot's
    rules: RowRules

    @property
    def counts(self) -> list[int]:
        return [entry.search.rows for entry in self.entries]

    @property
    def rows(self) -> int:
        return sum(self.counts)


def feed_size(rows: int, slots: int) -> int:
    """Elements of a feed's storage: four per row, one per slot."""
    return 4 * rows + slots


def feed_of(storage: Tensor, rows: int) -> Feed:
    """The feed whose storage is ``storage`` (a plan's ``static``, or a CUDA graph's inputs)."""
    per_row = storage[: 4 * rows].view(4, rows)
    return Feed(tokens=per_row[0], slot_of_row=per_row[1], row_in_slot=per_row[2], position=per_row[3],
                slot_ends=storage[4 * rows:])


def make_plan(caches: Caches, rules: Rules, entries: Sequence[Entry], pad_to: int | None = None) -> Plan:
    """The plan of one pass; ``pad_to``: as many rows as that, the rest in the scratch slot, and every
    slot read (the static shape of a CUDA graph's bucket: the caches need their scratch slot)."""
    kinds = [entry.search.kind for entry in entries]
    if kinds != sorted(kinds):
        raise ValueError("a pass takes beam searches first, then greedy ones, then sampled ones")
    lengths = tuple(caches.lengths[entry.slot] for entry in entries)
    rows = sum(entry.search.rows for entry in entries)
    padded_rows = rows if pad_to is None else pad_to
    if padded_rows < rows or (pad_to is not None and caches.scratch_slot is None):
        raise ValueError(f"{rows} rows do not pad to {pad_to} without a scratch slot")
    feed = np.empty((4, padded_rows), dtype=np.int64)  # token, slot, row in slot, position
    constraints = np.empty((3, rows), dtype=np.int64)
    at = 0
    for entry, length in zip(entries, lengths, strict=True):
        search, end = entry.search, at + entry.search.rows
        feed[:, at:end] = [search.last_tokens(), [entry.slot] * search.rows, range(search.rows),
                           [length] * search.rows]
        constraints[:, at:end] = np.array(search.constraints(rules), dtype=np.int64).T
        at = end
    if padded_rows > rows:  # each its own row and position of the scratch slot: no two write one place
        spare = np.arange(padded_rows - rows)
        feed[:, rows:] = [np.full_like(spare, rules.eot), np.full_like(spare, caches.scratch_slot or 0),
                          spare % caches.rows, spare % caches.n_ctx]
    used = caches.all_slots if pad_to is not None else max((e.slot for e in entries), default=-1) + 1
    ends = np.ones(used, dtype=np.int64)
    for entry, length in zip(entries, lengths, strict=True):
        ends[entry.slot] = length + 1
    if pad_to is not None and caches.scratch_slot is not None:
        ends[caches.scratch_slot] = caches.n_ctx
    beam_rows = sum(e.search.rows for e in entries if e.search.kind == 0)
    sampling_from = rows - sum(e.search.rows for e in entries if e.search.kind == 2)
    temperatures = np.array([e.search.spec.temperature for e in entries if e.search.kind == 2
                             for _ in range(e.search.rows)], dtype=np.float64)
    moves = [(entry.slot, target, origin, length) for entry, length in zip(entries, lengths, strict=True)
             for target, origin in enumerate(entry.moves or ()) if target != origin]
    move_array = np.array([move[:3] for move in moves], dtype=np.int64).reshape(-1, 3).T
    packed = np.concatenate([feed.ravel(), ends, constraints.ravel(), temperatures.view(np.int64),
                             move_array.ravel()])
    device = upload(packed, caches.device)
    static_size = feed_size(padded_rows, used)
    static, rest = device[:static_size], device[static_size:]
    row_rules, rest = rest[: 3 * rows].view(3, rows), rest[3 * rows:]
    sampled, move_part = rest[: len(temperatures)], rest[len(temperatures):].view(3, len(moves))
    candidates = max((e.search.rows + 1 for e in entries if e.search.kind == 0), default=0)
    return Plan(
        entries=tuple(entries), lengths=lengths, feed=feed_of(static, padded_rows), static=static,
        padded=pad_to is not None, moved=len(moves), move_slot=move_part[0], move_target=move_part[1],
        move_origin=move_part[2], move_length=max((move[3] for move in moves), default=0),
        rules=RowRules(text_rule=row_rules[0], stamp_from=row_rules[1], stamp_to=row_rules[2],
                       temperatures=sampled.view(torch.float64).float(), beam_rows=beam_rows,
                       sampling_from=sampling_from, candidates=candidates,
                       draws=tuple((e.search.generator, e.search.rows) for e in entries
                                   if e.search.kind == 2)))


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
    rows, width = plan.rows, plan.rules.candidates
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
