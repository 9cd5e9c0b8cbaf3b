"""The live path's logic without sockets or a model: LocalAgreement-2, turn detection, client events."""

from __future__ import annotations

import base64
import json

import pytest

from asr_server.contract import realtime_events as events
from asr_server.contract.domain import Segment
from asr_server.engine.live_agreement import (
    Agreement,
    Hypothesis,
    LiveItem,
    hypothesis_of,
    repetitive,
    spell,
)
from asr_server.engine.live_turns import FRAME, SpeechStarted, SpeechStopped, TurnDetector


def hyp(*segments: tuple[str, float]) -> Hypothesis:
    return hypothesis_of([Segment(text, 0.0, end) for text, end in segments])


# --- LocalAgreement-2 --------------------------------------------------------------------------


def test_commits_only_what_two_hypotheses_in_a_row_agree_on() -> None:
    agreement = Agreement()
    assert agreement.update(hyp(("So my fellow", 1.0))) == []
    assert agreement.tentative == ("So", "my", "fellow")
    assert agreement.update(hyp(("So my fellow Americans,", 2.0))) == ["So", "my", "fellow"]
    assert agreement.tentative == ("Americans,",)
    # The model changes its mind about the tail: nothing new is committed, the tail is replaced.
    assert agreement.update(hyp(("So my fellow Americans. Tell", 2.5))) == ["Americans."]  # case, stops
    assert agreement.update(hyp(("So my fellow Americans. Ask not", 3.0))) == []
    assert agreement.update(hyp(("so my fellow americans. ask not what", 3.0))) == ["ask", "not"]
    assert agreement.finish(hyp(("So my fellow Americans. Ask not what.", 3.5))) == ["what."]
    assert agreement.in_buffer == "So my fellow Americans. ask not what.".split()


def test_committed_words_are_found_again_when_the_model_respells_them() -> None:
    agreement = Agreement()
    agreement.update(hyp(("one two three four", 1.0)))
    agreement.update(hyp(("one two three four five", 2.0)))
    assert agreement.in_buffer == ["one", "two", "three", "four"]
    # "two" comes back as "Two," and "three" is lost: the committed words still end before "five".
    assert agreement.update(hyp(("one Two, four five six", 3.0))) == ["five"]


def test_the_buffer_is_cut_at_the_last_segment_end_holding_only_committed_words() -> None:
    agreement = Agreement(trim_after_s=15.0)
    first = hyp(("A whole sentence here.", 6.0), ("Another one follows.", 12.0), ("And a tail", 16.0))
    agreement.update(first)
    second = hyp(("A whole sentence here.", 6.0), ("Another one follows.", 12.0), ("And the tail", 16.0))
    assert len(agreement.update(second)) == 8  # the two sentences and "And"; then they differ
    assert agreement.cut(second, buffer_s=14.0) == 0.0  # not long enough yet
    assert agreement.cut(second, buffer_s=16.5) == 12.0  # the tail's segment is not all committed
    assert agreement.in_buffer == ["And"]  # the cut words' audio is gone
    # The next hypothesis hears the buffer from the cut.
    assert agreement.update(hyp(("And the tail grows", 4.5))) == ["the", "tail"]


def test_a_turns_last_decode_may_cut_the_buffer_sooner() -> None:
    agreement = Agreement(trim_after_s=15.0)
    agreed = hyp(("A whole sentence here.", 6.0), ("And a tail", 11.0))
    agreement.update(agreed)
    agreement.update(hyp(("A whole sentence here.", 6.0), ("And the tail", 11.0)))
    assert agreement.cut(agreed, buffer_s=11.5) == 0.0  # not past 15 s
    assert agreement.cut(agreed, buffer_s=11.5, after_s=12.0) == 0.0
    assert agreement.cut(agreed, buffer_s=11.5, after_s=10.0) == 6.0
    assert agreement.in_buffer == ["And"]


def test_a_buffer_with_nothing_agreed_is_forced_past_its_limit() -> None:
    agreement = Agreement(trim_after_s=15.0, force_after_s=25.0)
    agreement.update(hyp(("x y", 10.0), ("z", 20.0)))
    changing = hyp(("a b", 12.0), ("c d", 26.0))
    agreement.update(changing)
    assert agreement.cut(changing, 26.0) == 0.0
    assert agreement.force(changing, 24.0) == ([], 0.0)
    assert agreement.force(changing, 26.0) == (["a", "b"], 12.0)
    assert agreement.tentative == ("c", "d")


def test_an_items_reading_for_the_prompt_is_its_last_decode_of_the_buffer() -> None:
    item = LiveItem("item_1", start=0, buffer_start=0, agreement=Agreement(trim_after_s=15.0))

    def commit(hypothesis: Hypothesis) -> None:  # what live_decoding does with a hypothesis's new words
        new = item.agreement.update(hypothesis)
        item.deltas.append(spell(new, not item.words))
        item.words.extend(new)

    commit(hyp(("Last year it rose.", 6.0), ("The roofs were", 15.0)))
    early = hyp(("Last year it rose.", 6.0), ("The roofs were tight", 16.0))
    commit(early)
    assert item.agreement.cut(early, buffer_s=16.5) == 6.0  # "Last year it rose." is before the buffer
    assert item.agreement.in_buffer == ["The", "roofs", "were"]
    # With the whole turn heard, the last decode reads the buffer's committed words otherwise: the
    # deltas stand (they were final), but the items after are prompted with the better reading.
    last = hyp(("The rules were tightened.", 4.0))
    assert item.reading(last) == "Last year it rose. The rules were tightened."
    item.deltas.append(spell(item.agreement.finish(last), False))
    assert "".join(item.deltas) == "Last year it rose. The roofs were tightened."
    assert item.reading(hyp()) == "Last year it rose. The roofs were tightened."  # no words: the deltas


def test_a_phrase_said_twice_in_a_row_is_a_loop_said_once() -> None:
    looped = hyp(("With this measure, with this measure,", 1.3))
    assert looped.words == ("With", "this", "measure,") and looped.segment_ends == ((3, 1.3),)
    across = hyp(("So we did not stop there . . .", 1.0), ("But we didn't stop there . . .", 1.6),
                 ("But we didn't stop there . . . Towards", 2.5))
    assert " ".join(across.words) == "So we did not stop there . . . But we didn't stop there . . . Towards"
    assert across.segment_ends == ((9, 1.0), (17, 1.6), (18, 2.5))
    # A word or two said again is a speaker's restart, and kept; so is a phrase said again later.
    for kept in ("I think, I think that works.", "the rules and the rules of the rules", ". . . . . . yes"):
        assert " ".join(hyp((kept, 2.0)).words) == kept


def test_deltas_join_into_the_text() -> None:
    assert spell(["Hello,", "world"], first=True) + spell(["again."], first=False) == "Hello, world again."
    assert repetitive("the the " * 30) and not repetitive("So my fellow Americans, ask not.")


# --- turn detection ------------------------------------------------------------------------------


def turns(probabilities: list[float], silence_ms: int = 500) -> list[object]:
    detector = TurnDetector(0.5, silence_ms)
    found = [detector.frame(p, (i + 1) * FRAME) for i, p in enumerate(probabilities)]
    return [t for t in found if t is not None]


def test_speech_starts_after_it_lasts_and_stops_after_the_silence() -> None:
    speech = [0.0] * 10 + [0.9] * 20 + [0.1] * 20
    found = turns(speech)
    assert isinstance(found[0], SpeechStarted) and found[0].start == 10 * FRAME
    assert found[0].at >= found[0].start + 250 * 16
    assert isinstance(found[1], SpeechStopped) and found[1].speech_end == 30 * FRAME
    assert found[1].at - found[1].speech_end >= 500 * 16


def test_a_click_and_a_short_gap_are_not_turns() -> None:
    assert turns([0.0] * 5 + [0.9] * 3 + [0.0] * 30) == []  # 96 ms: a click
    # A 300 ms gap inside speech (under the 500 ms silence) does not end the turn.
    found = turns([0.9] * 20 + [0.0] * 9 + [0.9] * 20 + [0.0] * 20)
    assert [type(t) for t in found] == [SpeechStarted, SpeechStopped]
    # Between the thresholds (hysteresis) speech goes on.
    assert [type(t) for t in turns([0.9] * 20 + [0.4] * 30)] == [SpeechStarted]


# --- client events -------------------------------------------------------------------------------


def parse(event: dict[str, object]) -> object:
    return events.parse_event(json.dumps(event), events.SessionSettings())


def test_the_ga_and_beta_session_updates() -> None:
    update = parse({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": "whisper-1", "language": "BG", "prompt": "Пловдив"},
        "turn_detection": None}}}})
    assert isinstance(update, events.SessionUpdate) and not update.beta
    assert update.settings == events.SessionSettings(24000, "bg", "Пловдив", "whisper-1", None)
    beta = parse({"type": "transcription_session.update", "session": {
        "input_audio_format": "pcm16", "input_audio_transcription": {"language": "de"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}})
    assert isinstance(beta, events.SessionUpdate) and beta.beta
    assert beta.settings.language == "de" and beta.settings.turn_detection == events.ServerVad(0.5, 300, 700)
    shown = events.session_object("sess_1", update.settings)
    assert shown["audio"]["input"]["turn_detection"] is None and shown["type"] == "transcription"


def test_audio_and_buffer_events() -> None:
    pcm = b"\x01\x00\xff\x7f"
    append = parse({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
    assert append == events.Append(pcm)
    assert parse({"type": "input_audio_buffer.commit"}) == events.Commit()
    assert parse({"type": "input_audio_buffer.clear"}) == events.Clear()


@pytest.mark.parametrize(("event", "code", "param"), [
    ("not json", "bad_request", None),
    ([1, 2], "bad_request", None),
    ({"type": "response.create", "event_id": "e1"}, "bad_request", "type"),
    ({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}, "invalid_audio", "audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01").decode()},
     "invalid_audio", "audio"),
    ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_audio", "audio"),
    ({"type": "session.update", "session": {"type": "realtime"}}, "bad_request", "session.type"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
     "bad_request", "session.audio.input.format"),
    ({"type": "session.update",
      "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}},
     "bad_request", "session.audio.input.format.rate"),
    ({"type": "session.update", "session": {"audio": {"input": {"transcription": {"language": "mk"}}}}},
     "unsupported_language", "session.audio.input.transcription.language"),
    ({"type": "session.update",
      "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}},
     "bad_request", "session.audio.input.turn_detection"),
    ({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"threshold": 2}}}}},
     "bad_request", "session.audio.input.turn_detection.threshold"),
])
def test_bad_events_are_named(event: object, code: str, param: str | None) -> None:
    text = event if isinstance(event, str) else json.dumps(event)
    with pytest.raises(events.EventError) as raised:
        events.parse_event(text, events.SessionSettings())
    assert (raised.value.code, raised.value.param) == (code, param)
    body = events.of_error(raised.value)
    assert body["type"] == "error" and body["error"]["code"] == code and body["error"]["message"]
    if isinstance(event, dict) and "event_id" in event:
        assert body["error"]["event_id"] == event["event_id"]


# --- the session's tape ------------------------------------------------------------------------


def test_the_tape_keeps_recent_audio_its_arrival_and_its_speech() -> None:
    import numpy as np

    from asr_server.engine.live_audio import Tape
    from asr_server.engine.vad import SpeechRegion

    tape = Tape()
    for value in range(4):
        tape.append(np.full(16_000, value, np.float32))  # four seconds, one per append
    tape.heard_speech(16_000, 20_000)
    tape.heard_speech(20_000, 24_000)  # joins the region before
    tape.heard_speech(40_000, 44_000)
    assert tape.regions(16_000, 48_000, pad=0) == [SpeechRegion(0.0, 0.5), SpeechRegion(1.5, 1.75)]
    assert tape.regions(0, 32_000, pad=1600)[0] == SpeechRegion(0.9, 1.6)  # widened, in the slice's seconds
    assert list(tape.slice(15_999, 16_001)) == [0.0, 1.0]
    assert tape.arrived(16_000) <= tape.arrived(16_001)
    tape.forget_before(32_000)
    assert tape.start == 32_000 and tape.end == 64_000
    assert list(tape.slice(31_000, 32_001)) == [2.0]  # what is forgotten is gone
    assert tape.regions(0, 64_000, pad=0) == [SpeechRegion(40_000 / 16_000, 44_000 / 16_000)]
