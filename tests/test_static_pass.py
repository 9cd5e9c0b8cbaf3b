"""The decoder pass in the static shape a CUDA graph captures, held to the eager pass on the CPU.

A CUDA graph (engine/cuda_graphs.py) replays the kernels of ``forward.static_pass`` on a feed padded
to its bucket: the padded rows write only into the cache's scratch slot, and every slot is read to
the whole context under the mask. Capture and replay need a GPU (tests/test_cuda.py); what they
replay is checked here, on the real model and real speech: the real rows' logits are the eager
pass's, and whole decodes through padded passes choose the eager passes' tokens.
"""

from __future__ import annotations

import pytest
import torch

from asr_server.engine import forward, kv_cache
from asr_server.engine.cuda_graphs import GraphedPasses, buckets
from asr_server.engine.pass_plan import Entry, advance, make_plan
from asr_server.engine.search import SearchSpec
from asr_server.engine.token_choice import Rules

from .conftest import Engines
from .test_pass_reads import decoding_mid_way, one_pass


def test_buckets_are_powers_of_two_up_to_the_most_rows() -> None:
    assert buckets(40) == (1, 2, 4, 8, 16, 32, 40)
    assert buckets(32) == (1, 2, 4, 8, 16, 32)
    assert buckets(1) == (1,)


def test_graphs_want_a_cuda_cache_with_a_scratch_slot(engines: Engines) -> None:
    caches = kv_cache.Caches(engines.model(), 2, 5, torch.float32, batched=True, scratch=True)
    assert caches.scratch_slot == 2 and caches.free == [0, 1] and caches.self_k[0].shape[0] == 3
    with pytest.raises(ValueError, match="CUDA"):
        GraphedPasses(caches)


def test_a_padded_static_pass_gives_the_eager_pass_logits(engines: Engines) -> None:
    with torch.inference_mode():
        caches, rules, entries = decoding_mid_way(engines.model(), batched=True, scratch=True)
        for _ in range(3):
            entries, _ = one_pass(caches, rules, entries)
        eager_plan = make_plan(caches, rules, entries)
        padded_plan = make_plan(caches, rules, entries, pad_to=16)
        forward.rearrange(caches, padded_plan)
        assert padded_plan.feed.rows == 16 and padded_plan.feed.slots_read == caches.all_slots
        static = forward.static_pass(caches, padded_plan.feed)
        assert static.shape[0] == 16 and caches.lengths[: caches.slots] == list(padded_plan.lengths)
        eager = forward.step(caches, eager_plan)
    rows = eager_plan.rows
    assert rows == 11
    torch.testing.assert_close(static[:rows], eager, rtol=1e-4, atol=1e-4)
    assert torch.equal(static[:rows].argmax(dim=-1), eager.argmax(dim=-1))


def decode(engines: Engines, padded: bool) -> list[list[list[int]]]:
    """Greedy and beam 5 on two windows of real speech, to the end, through eager or padded passes."""
    specs = (SearchSpec(0.0, beam_size=5), SearchSpec(0.0))
    with torch.inference_mode():
        caches, rules, entries = decoding_mid_way(engines.model(), batched=True, specs=specs, scratch=True)
        while not all(entry.search.done for entry in entries):
            live = [entry for entry in entries if not entry.search.done]
            moves = padded_pass(caches, rules, live) if padded else one_pass(caches, rules, live)[0]
            by_slot = {entry.slot: entry for entry in moves}
            entries = [by_slot.get(entry.slot, entry) for entry in entries]
    return [entry.search.sequences for entry in entries]


def padded_pass(caches: kv_cache.Caches, rules: Rules, entries: list[Entry]) -> list[Entry]:
    """What GraphedPasses.run does around its replay, with the static pass run eagerly instead."""
    bucket = next(size for size in buckets(caches.slots * caches.rows) if size >= sum(e.search.rows
                                                                                      for e in entries))
    plan = make_plan(caches, rules, entries, pad_to=bucket)
    forward.rearrange(caches, plan)
    logits = forward.static_pass(caches, plan.feed)[: plan.rows]
    forward.passed(caches, plan)
    moves = advance(rules, plan, logits)
    return [Entry(e.slot, e.search, moved) for e, moved in zip(entries, moves, strict=True)]


def test_decodes_through_padded_passes_choose_the_eager_tokens(engines: Engines) -> None:
    eager, padded = decode(engines, padded=False), decode(engines, padded=True)
    assert eager == padded
    assert all(len(sequences[0]) > 10 for sequences in eager)  # real decodes, not a first token
