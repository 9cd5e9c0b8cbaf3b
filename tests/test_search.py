"""The search's own parts, without the model."""

from __future__ import annotations

from asr_server.engine.search import SearchSpec, WindowResult


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
