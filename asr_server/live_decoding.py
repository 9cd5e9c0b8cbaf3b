"""What a live item's decodes do: each decode of its buffer handed to the scheduler, and its result
turned into OpenAI's events.

``LiveDecoding`` is the half of ``LiveSession`` (``live_session.py``) that
the session's one decoding task runs: a decode of an item's unconfirmed audio
(with the VAD's regions as its speech, the committed text before it as its
prompt, whisper's fallback only at the end of the turn, and the encoder's
window fitted to the buffer: engine/transcribe_state.py); a hypothesis
moves LocalAgreement-2 on (``delta`` for what two in a row agree on, the
extension's ``tentative`` for the rest) and cuts the buffer; the turn's last
decode completes the item, which is logged and counted like a request. That
decode, which the user waits for, starts past the committed words: the
buffer is cut at them, or they are forced as the decode's prefix. A
hypothesis decoded without fallback that fails whisper's checks has no words
(a hallucination is never a delta nor a prompt): the turn's end is then
decoded again, with fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from asr_server.config import Config
from asr_server.contract import realtime_events as events
from asr_server.contract.domain import TranscribeOptions, Transcription
from asr_server.contract.errors import AsrError
from asr_server.engine.job import Speech
from asr_server.engine.live_agreement import Hypothesis, LiveItem, hypothesis_of, repetitive, spell
from asr_server.engine.live_audio import Tape
from asr_server.engine.live_turns import SAMPLE_RATE
from asr_server.service import AsrService, RequestRecord

log = logging.getLogger(__name__)

PAUSE_S = 0.15  # a pause this long starts a decode at once: likely the turn's last
REGION_PAD_S = 0.2  # the speech regions handed to the engine, widened as the file gate's are
PROMPT_CHARS = 200
# A decode's tokens are bounded by what its audio can hold: the eval clips' speech takes at most 7
# tokens a second (Bulgarian), so this leaves room for any speech, and a decode that loops ("the the
# the ...", judged a hallucination anyway) ends in a few seconds' worth rather than at 224.
TOKENS_PER_S = 20
TOKENS_SLACK = 24
END_TRIM_AFTER_S = 10.0  # a turn's last decode: from this long, it starts past its committed words
Send = Callable[[dict[str, Any]], Awaitable[None]]


class LiveDecoding:
    """A live session's decodes and their events (the state is the session's)."""

    service: AsrService
    config: Config
    settings: events.SessionSettings
    send: Send
    machine_id: str
    tape: Tape
    items: deque[LiveItem]
    context: list[tuple[str, str]]  # completed items' language and text, for the prompt
    _shown: tuple[str, str] | None  # the last tentative event's item and text
    _running: tuple[asyncio.Future[None], LiveItem] | None  # the session worker's decode, its item
    spoken: tuple[str, int] | None  # the language detected in the last completed item, its speech's end

    def _forget(self) -> None:
        keep = min([i.buffer_start for i in self.items] + [self.tape.end - self._padding() - SAMPLE_RATE])
        self.tape.forget_before(keep)

    def _padding(self) -> int:
        vad = self.settings.turn_detection
        return (vad.prefix_padding_ms if vad else 0) * SAMPLE_RATE // 1000

    def _prompt(self, item: LiveItem) -> str | None:
        """The user's prompt, then the committed text before the buffer: earlier items' only in the
        item's language (another language's text would pull whisper towards translating)."""
        before = " ".join(text for language, text in self.context if language == item.language)
        text = f"{before} {spell(item.words[:len(item.words) - len(item.agreement.in_buffer)], True)}"
        text = text.strip()[-PROMPT_CHARS:].strip()
        if self.settings.prompt:
            text = f"{self.settings.prompt} {text}".strip()
        return text or None

    async def _decode(self, item: LiveItem, pause: bool = False) -> None:
        """A decode of the item's buffer: ``pause``, the one that a pause in the turn starts at once."""
        if item.last is not None and item.last[0].words and \
                item.heard_all(item.last[1], item.last[2], PAUSE_S * SAMPLE_RATE):
            await self._complete(item, item.last[0], item.last[3])  # the pause's decode was the last
            return
        final = item.end is not None
        if (final or pause) and item.last is not None and item.last[1] == item.buffer_start:
            # Likely the turn's last decode, which the user waits for: a long turn's buffer is cut
            # at its committed words sooner than 15 s, as its cost grows with the buffer.
            cut = item.agreement.cut(item.last[0], (self.tape.end - item.buffer_start) / SAMPLE_RATE,
                                     after_s=END_TRIM_AFTER_S)
            item.buffer_start += int(cut * SAMPLE_RATE)
            running, stale = self._running, False
            if pause and cut and running is not None and running[1] is item and not running[0].done():
                running[0].cancel()  # a decode of the buffer before the cut: its result would be dropped
                stale = True
            if cut:
                log.debug("live item %s: the turn's last decode cut %.2f s of committed words%s", item.id,
                          cut, " (the decode under way cancelled)" if stale else "")
        start, end = item.buffer_start, (item.end if item.end is not None else self.tape.end)
        # What is still long after the cut: its committed words are forced, not decoded again, so the
        # user waits only for what follows them.
        prefix = spell(item.agreement.in_buffer, True) if (final or pause) and \
            end - start > END_TRIM_AFTER_S * SAMPLE_RATE else None
        if prefix:
            log.debug("live item %s: the turn's last decode forces %d committed words of %.1f s", item.id,
                      len(item.agreement.in_buffer), (end - start) / SAMPLE_RATE)
        item.decoded_to = end
        item.started += 1
        order = item.started
        regions = self.tape.regions(start, end, int(REGION_PAD_S * SAMPLE_RATE))
        if not regions:
            result = Transcription("", (), item.language or "")
        else:
            options = TranscribeOptions(item.language, "transcribe", self._prompt(item),
                                        beam_size=self.config.live_beam_size or None,
                                        fallback=item.end is not None,
                                        fit_window=self.config.live_fit_window, prefix=prefix or None,
                                        sample_len=TOKENS_PER_S * (end - start) // SAMPLE_RATE + TOKENS_SLACK)
            began = time.monotonic()
            result = await self.service.transcribe(self.tape.slice(start, end), options,
                                                   speech=Speech(checked=True, regions=regions))
            if log.isEnabledFor(logging.DEBUG):
                ended = f", {time.monotonic() - item.ended_at:.2f} s after its speech ended" \
                    if item.ended_at else ""
                log.debug("live item %s: decode %d (%s) of %.1f s took %.2f s%s", item.id, order,
                          "final" if final else "pause" if pause else "hypothesis",
                          (end - start) / SAMPLE_RATE, time.monotonic() - began, ended)
        hypothesis = hypothesis_of(result.segments)
        if order < item.applied or item not in self.items or start != item.buffer_start:
            # A later decode (a pause's, beside this one) is in already, the item is done, or the
            # buffer was cut meanwhile (this hypothesis's words and times are of audio now gone).
            return
        item.applied = order
        # A hypothesis (no fallback) with no words may have been judged a hallucination: the end of
        # the turn is decoded again, with whisper's fallback.
        if final or (hypothesis.words and item.heard_all(start, end, PAUSE_S * SAMPLE_RATE)):
            await self._complete(item, hypothesis, result.language)
            return
        item.last = (hypothesis, start, end, result.language)
        await self._hypothesis(item, hypothesis, result, (end - start) / SAMPLE_RATE)

    async def _hypothesis(self, item: LiveItem, hypothesis: Hypothesis, result: Transcription,
                          buffer_s: float) -> None:
        new = item.agreement.update(hypothesis)
        if item.language is None and buffer_s >= 2.0 and result.language:
            item.language = result.language  # later decodes of the item keep to it
        cut = item.agreement.cut(hypothesis, buffer_s)
        if not cut:
            forced, cut = item.agreement.force(hypothesis, buffer_s)
            new += forced
        log.debug("live item %s: %.1f s heard, %d words committed, %.2f s cut", item.id, buffer_s,
                  len(new), cut)
        if new:
            await self._delta(item, new, hypothesis)
        if cut:
            item.buffer_start += int(cut * SAMPLE_RATE)
        shown = (item.id, spell(item.agreement.tentative, not item.words))
        if shown != self._shown:
            self._shown = shown
            await self.send(events.tentative(*shown))

    async def _delta(self, item: LiveItem, new: list[str], hypothesis: Hypothesis) -> None:
        text = spell(new, not item.words)
        item.words.extend(new)
        item.deltas.append(text)
        await self.send(events.delta(item.id, text))
        through = len(hypothesis.words) - len(item.agreement.tentative)
        ends = [end for words, end in hypothesis.segment_ends if words >= through]
        if ends:
            heard = item.buffer_start + int(ends[0] * SAMPLE_RATE)
            lag = time.monotonic() - self.tape.arrived(heard)
            self.service.metrics.live_commit_lag.observe(max(0.0, lag))

    async def _complete(self, item: LiveItem, hypothesis: Hypothesis, language: str) -> None:
        self.items.remove(item)  # first: a decode of it that ends while these events go out is dropped
        reading = item.reading(hypothesis)
        rest = item.agreement.finish(hypothesis)
        if rest:
            await self._delta(item, rest, hypothesis)
        transcript = "".join(item.deltas)
        assert item.end is not None
        audio_s = (item.end - item.start) / SAMPLE_RATE
        await self.send(events.completed(item.id, transcript, audio_s, language or item.language or ""))
        if transcript and not repetitive(reading):
            self.context = [*self.context[-8:], (language or item.language or "", reading)]
            if language:
                self.spoken = (language, item.speech_end or item.end)
        latency = max(0.0, time.monotonic() - item.ended_at)
        self.service.metrics.live_final_latency.observe(latency)
        self._record(item, "ok", audio_s, language)
        self._forget()

    async def _fail(self, item: LiveItem, error: AsrError) -> None:
        if item in self.items:
            self.items.remove(item)
        await self.send(events.failed(item.id, error.code, str(error)))
        end = item.end if item.end is not None else self.tape.end
        self._record(item, error.code, (end - item.start) / SAMPLE_RATE, item.language or "-")
        self._forget()

    def _record(self, item: LiveItem, status: str, audio_s: float, language: str) -> None:
        record = RequestRecord(kind="live", authenticated=True, machine_id=self.machine_id,
                               task="transcribe", language=language or "-", audio_s=audio_s, status=status)
        record.started = record.audio_arrived = item.ended_at or time.monotonic()
        self.service.record(record)
