"""The search's own parts, without the model."""

from __future__ import annotations

from whisper.tokenizer import get_tokenizer

from asr_server.engine.search import SearchSpec, WindowResult, WindowSearch
from asr_server.engine.token_choice import TEXT_FREE, TEXT_NONE, TEXT_ONLY_END, TO_THE_END, Rules


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


def test_forced_tokens_are_text_the_rules_bind_as_if_chosen() -> None:
    """A forced start ("<|0.00|> And so my", or a closed segment) is read as already chosen: the next
    token may not go back to its timestamp, a closed segment's pair is completed, and its
    log-probabilities are not counted in the result's average."""
    tokenizer = get_tokenizer(True, num_languages=99, language="en", task="transcribe")
    rules, begin, eot = Rules(tokenizer, 1500), tokenizer.timestamp_begin, tokenizer.eot
    initial = list(tokenizer.sot_sequence)
    text = tokenizer.encode(" And so my")
    open_start = WindowSearch(SearchSpec(0.0), initial, 0, 224, 448, forced=[begin, *text],
                              forced_stamp=begin)
    assert open_start.sample_begin == len(initial) and open_start.first_choice_at == len(initial) + len(text)
    assert open_start.constraints(rules) == [(TEXT_FREE, begin, begin + 1)]  # never back to 0.00
    closed = [begin, *text, begin + 50]
    after_close = WindowSearch(SearchSpec(0.0, beam_size=2), initial, 0, 224, 448, forced=closed,
                               forced_stamp=begin + 50)
    assert after_close.constraints(rules) == [(TEXT_ONLY_END, begin, begin + 50)] * 2  # its pair, or the end
    free = WindowSearch(SearchSpec(0.0), initial, 0, 224, 448)
    assert free.constraints(rules) == [(TEXT_NONE, rules.max_initial_timestamp + 1, TO_THE_END)]

    open_start.take_greedy([begin + 60], [-0.5], rules)
    open_start.take_greedy([eot], [-0.25], rules)
    result = open_start.result(tokenizer)
    assert result.tokens == (begin, *text, begin + 60) and result.text == "And so my"
    assert result.avg_logprob == -0.75 / 2  # the chosen timestamp and the end of text only
