"""A live dictation session: audio in as it is spoken, items out, their words as they become final.

The transport (``transports/realtime.py``) hands this session 16 kHz samples
with silero's per-frame speech probabilities, and the client's commits and
clears; the session sends OpenAI's server events through ``send``. An item
is one turn of speech (server VAD), or the audio between commits.

While an item is open, its unconfirmed audio (the buffer) is decoded again
after each ``STEP_S`` of new audio, and once more as soon as a pause starts
(beside a hypothesis still running that stops short of the pause, so the
decode that hears the turn's end is usually done when the turn is declared
over; whichever of two finishes first, the older result is dropped). Each decode is one more request to the
scheduler, in the same queue and decoding loop as file requests
(``live_decoding.py`` turns its result into events: LocalAgreement-2's
deltas, the tentative tail, the completed item).

One decode per session runs at a time, each over all that is heard, so a
server that falls behind decodes less often instead of lagging further; past
``live_max_buffer_s`` of unconfirmed audio an ``error`` event says so and the
item ends where it stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import numpy as np

from asr_server.contract import realtime_events as events
from asr_server.contract.errors import AsrError, InternalError, Overloaded
from asr_server.engine.live_agreement import Agreement, LiveItem
from asr_server.engine.live_audio import Tape
from asr_server.engine.live_turns import FRAME, SAMPLE_RATE, SpeechStarted, SpeechStopped, TurnDetector
from asr_server.live_decoding import PAUSE_S, LiveDecoding, Send
from asr_server.service import AsrService

log = logging.getLogger(__name__)

STEP_S = 0.5  # new audio between two decodes of an open item (one decode takes about as long here)
KEEP_LANGUAGE_S = 1.0  # an item this soon after the last one's speech keeps its detected language
FIRST_DECODE_S = 1.0  # an item's first decode, but at a pause: less audio rarely holds a whole word
MIN_COMMIT_S = 0.1  # OpenAI refuses a commit of less than 100 ms of audio


class LiveSession(LiveDecoding):
    """One live session's audio, turns and items; its one worker task decodes them in order."""

    def __init__(self, service: AsrService, settings: events.SessionSettings, send: Send,
                 machine_id: str = "unknown") -> None:
        self.service, self.settings, self.send, self.machine_id = service, settings, send, machine_id
        self.config = service.config
        self.tape = Tape()
        self.turns = self._detector()
        self.items: deque[LiveItem] = deque()  # not yet completed, oldest first; the last may be open
        self.context: list[tuple[str, str]] = []  # completed items' language and text, for the prompt
        self.previous_item: str | None = None
        self.spoken: tuple[str, int] | None = None
        self._frames = 0  # VAD frames judged so far: frame n ends at sample n * FRAME
        self._shown: tuple[str, str] | None = None  # the last tentative event's item and text
        self._wake = asyncio.Event()
        self._running: tuple[asyncio.Future[None], LiveItem] | None = None  # the worker's decode, its item
        self._pauses: dict[str, asyncio.Future[None]] = {}  # an item's decode at a pause, beside the worker's
        self._worker = asyncio.create_task(self._work())

    def _detector(self) -> TurnDetector:
        vad = self.settings.turn_detection
        return TurnDetector(vad.threshold if vad else 0.5, vad.silence_duration_ms if vad else 500)

    def update(self, settings: events.SessionSettings) -> None:
        changed_turns, self.settings = settings.turn_detection != self.settings.turn_detection, settings
        if changed_turns:
            self.turns = self._detector()

    async def close(self) -> None:
        for pause in list(self._pauses.values()):
            pause.cancel()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass

    # -- audio in ---------------------------------------------------------------------------------

    async def audio(self, samples: np.ndarray, probabilities: list[float]) -> None:
        """Samples heard (16 kHz) and the speech probability of each frame they completed."""
        if self.settings.turn_detection is None and self._open_item() is None:
            await self._open(self.tape.end, announce=False)  # the buffer between commits
        self.tape.append(samples)
        threshold = self.settings.turn_detection.threshold if self.settings.turn_detection else 0.5
        for probability in probabilities:
            self._frames += 1
            end = self._frames * FRAME
            if probability >= threshold:
                self.tape.heard_speech(end - FRAME, end)
            turn = self.turns.frame(probability, end)
            if isinstance(turn, SpeechStarted) and self.settings.turn_detection is not None:
                await self._open(max(self.tape.start, turn.start - self._padding()))
            elif isinstance(turn, SpeechStopped) and self.settings.turn_detection is not None:
                await self._end_turn(turn.at, turn.speech_end)
        await self._check_backlog()
        self._forget()
        item = self._open_item()
        if item is not None and item.id not in self._pauses and self._pause_unheard(item.decoded_to) \
                and self._running is not None and self._running[1] is item and not self._running[0].done():
            # The turn may be over, and the decode under way stops short of it: the decode that hears
            # its end starts now, beside it (the loop batches the two), rather than after it.
            self._pauses[item.id] = asyncio.ensure_future(self._beside(item))
        self._wake.set()

    async def _beside(self, item: LiveItem) -> None:
        try:
            await self._decode(item, pause=True)
        except Exception:  # the worker decodes the turn's end again if it must
            log.debug("a pause's decode failed", exc_info=True)
        finally:
            del self._pauses[item.id]

    def _open_item(self) -> LiveItem | None:
        return self.items[-1] if self.items and self.items[-1].end is None else None

    async def _open(self, start: int, announce: bool = True) -> None:
        language = self.settings.language
        recent = self.spoken is not None and start - self.spoken[1] < KEEP_LANGUAGE_S * SAMPLE_RATE
        if language is None and recent and self.spoken is not None:
            language = self.spoken[0]  # a short pause in a sentence: detection on a short item errs more
        item = LiveItem(events.new_id("item"), start, start, Agreement(), decoded_to=start, language=language)
        self.items.append(item)
        if announce:
            await self.send(events.event("input_audio_buffer.speech_started", item_id=item.id,
                                         audio_start_ms=start * 1000 // SAMPLE_RATE))

    async def _end_turn(self, at: int, speech_end: int) -> None:
        item = self._open_item()
        if item is None:
            return
        item.end, item.speech_end = at, speech_end
        item.ended_at = self.tape.arrived(speech_end)
        await self.send(events.event("input_audio_buffer.speech_stopped", item_id=item.id,
                                     audio_end_ms=at * 1000 // SAMPLE_RATE))
        await self._committed(item)

    async def _committed(self, item: LiveItem) -> None:
        await self.send(events.event("input_audio_buffer.committed", item_id=item.id,
                                     previous_item_id=self.previous_item))
        self.previous_item = item.id
        self._wake.set()

    async def commit(self) -> None:
        """The client's commit: the buffer becomes an item, decoded to its end."""
        item = self._open_item()
        if item is None or self.tape.end - item.start < MIN_COMMIT_S * SAMPLE_RATE:
            raise events.EventError("bad_request", "the input audio buffer holds less than 100 ms of audio: "
                                    "nothing to commit", None)
        await self._close_now(item)

    async def clear(self) -> None:
        item = self._open_item()
        if item is not None:
            self.items.pop()
        self._forget()
        await self.send(events.event("input_audio_buffer.cleared"))

    async def _check_backlog(self) -> None:
        held_s = (self.tape.end - self.tape.start) / SAMPLE_RATE
        if held_s > 2 * self.config.live_max_buffer_s:  # ended items wait too: audio sent too fast
            raise Overloaded(f"the server holds {held_s:.0f} s of this stream not yet transcribed, twice "
                             "LIVE_MAX_BUFFER_S: the session ends (send audio no faster than real time)")
        item = self._open_item()
        if item is None or self.tape.end - item.buffer_start <= self.config.live_max_buffer_s * SAMPLE_RATE:
            return
        behind = (self.tape.end - item.decoded_to) / SAMPLE_RATE
        await self.send(events.error_event(
            "overloaded", f"the server is {behind:.1f} s behind this stream and holds "
            f"{self.config.live_max_buffer_s:.0f} s of it not yet final: the item ends here",
            kind="server_error"))
        await self._close_now(item)

    async def _close_now(self, item: LiveItem) -> None:
        """The item ends where the audio stands (a commit, a backlog); a turn still going on goes on
        in a new item."""
        item.end = item.speech_end = self.tape.end
        item.ended_at = time.monotonic()
        await self._committed(item)
        if self.settings.turn_detection is not None and self.turns.speaking:
            await self._open(self.tape.end, announce=False)

    # -- decoding ---------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.items:
                item = self.items[0]
                if item.end is None and not self._due(item):
                    break
                if item.end is not None and item.id in self._pauses:
                    await asyncio.wait({self._pauses[item.id]})  # it may have heard the whole turn
                    if item not in self.items:
                        continue
                running = asyncio.ensure_future(self._decode(item))
                self._running = (running, item)
                try:
                    await asyncio.wait({running})
                except asyncio.CancelledError:  # the session ends
                    running.cancel()
                    raise
                if running.cancelled():
                    continue  # a pause's decode cut the buffer under it (live_decoding.py)
                try:
                    running.result()
                except AsrError as error:
                    if item.end is None and isinstance(error, Overloaded):
                        break  # the next step tries again with more audio
                    await self._fail(item, error)
                    if isinstance(error, InternalError):
                        return
                except Exception as error:
                    log.exception("a live item failed")
                    await self._fail(item, InternalError(f"{type(error).__name__}"))

    def _due(self, item: LiveItem) -> bool:
        if self._pause_unheard(item.decoded_to):
            return True
        if self.tape.end - item.buffer_start < FIRST_DECODE_S * SAMPLE_RATE:
            return False  # too little to hold a word: the first decode waits for a second of audio
        return self.tape.end - item.decoded_to >= STEP_S * SAMPLE_RATE

    def _pause_unheard(self, decoded_to: int, lasted_s: float = PAUSE_S) -> bool:
        """A pause has lasted ``lasted_s`` and no decode has heard ``PAUSE_S`` of it yet."""
        pause = self.turns.pause_since
        return (pause is not None and decoded_to < pause + PAUSE_S * SAMPLE_RATE
                and pause + lasted_s * SAMPLE_RATE <= self.tape.end)
