"""The search's own parts, without the model."""

from __future__ import annotations

import torch

from asr_server.engine.search import SearchSpec, WindowResult, top_k


def test_top_k_finds_what_topk_finds() -> None:
    generator = torch.Generator().manual_seed(7)
    for width in (51865, 51866, 1000, 7):
        x = torch.log_softmax(torch.randn(5, width, generator=generator) * 4, dim=-1)
        x[:, ::3] = -float("inf")  # suppressed tokens, as the logit filters leave them
        x[4, 6:] = -float("inf")  # a row with fewer than six finite: padding must not be picked
        expected, found = x.topk(6), top_k(x, 6)
        assert torch.equal(found[0], expected.values) and torch.equal(found[1], expected.indices)


def test_a_search_has_a_row_per_sequence() -> None:
    assert SearchSpec(0.0).rows == 1
    assert SearchSpec(0.0, beam_size=5).rows == 5
    assert SearchSpec(0.4, best_of=5).rows == 5


def test_compression_ratio_flags_repetition() -> None:
    def ratio(text: str) -> float:
        return WindowResult((), text, 0.0, 0.0, 0.0).compression_ratio

    assert ratio("") == 0.0
    assert ratio("And so my fellow Americans, ask not what your country can do for you.") < 2.4
    assert ratio("thank you " * 40) > 2.4
