"""One request's way through its audio, window by window, by whisper's transcribe() rules; no model calls.

``RequestWindows`` holds what whisper's ``transcribe`` keeps between its
30 s windows: the mel, the seek position, the tokens so far (the next
window's prompt), where the prompt was last reset, and the segments. The
decoding loop asks it for the next window's mel and for each search to run
on it (temperature 0 first, then the fallback temperatures), and hands back
each search's result; ``judge`` applies whisper's checks (compression
ratio, average log-probability, no-speech) and, once a window is settled,
``accept`` cuts it into segments at its timestamp tokens and moves the seek
on, as ``transcribe`` does. Word timings are whisper's own
(``whisper.timing.add_word_timestamps``), computed by the loop and handed
to ``accept``.

Left out of whisper's loop: ``clip_timestamps``, ``carry_initial_prompt``
and ``hallucination_silence_threshold``, which the server never sets. Added
to it: a request's sampled fallbacks draw from a generator of its own
(``SAMPLING_SEED``), and a live decode's ``prefix`` (its committed words)
starts the first window's text, forced rather than decoded (search.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from whisper.audio import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, pad_or_trim
from whisper.tokenizer import Tokenizer

from asr_server.contract.domain import TranscribeOptions
from asr_server.engine.search import NO_STAMP, SearchSpec, WindowResult, WindowSearch
from asr_server.engine.vad import SpeechRegion, overlaps_speech

# whisper's CLI defaults: beam search or greedy, then sampling at rising temperatures
# when a window fails the compression-ratio or log-probability checks.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5
# Each request draws its fallback samples from a generator of its own, every one seeded alike: the
# same audio and options give the same text whatever else the server is decoding beside them.
SAMPLING_SEED = 0


def temperature_schedule(first: float) -> tuple[float, ...]:
    """From the request's temperature (OpenAI's ``temperature``; 0 by default) up whisper's fallbacks."""
    return (first, *(t for t in TEMPERATURES if t > first))


COMPRESSION_RATIO_THRESHOLD = 2.4
LOGPROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
WINDOW_FRAMES = int(N_FRAMES)  # 3000 mel frames: 30 s
INPUT_STRIDE = WINDOW_FRAMES // 1500  # mel frames per timestamp token
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # 0.02 s
# A fitted window (``TranscribeOptions.fit_window``, a live decode) is its audio and this much of the
# padding after it (zeros, as transcribe() pads), rounded up to whole seconds, not 30 s: the encoder's
# cost falls with the window (base, 2 cores: 0.44 s for 30 s, 0.07 s for 8 s). With 3 s, live
# hypotheses cut mid-sentence repeated their last words and the live WER rose 7 points; with 6 s the
# latency goals hold and the WER is near the whole window's (docs/live.md, "A fitted window").
FIT_SILENCE_FRAMES = 6 * int(FRAMES_PER_SECOND)

# Word timings for one window's segments, in place (whisper.timing.add_word_timestamps's contract).
AddWords = Callable[[list[dict[str, Any]], Tokenizer, torch.Tensor, int, float], None]


class RequestWindows:
    """The state whisper's transcribe() carries from window to window, for one request."""

    def __init__(self, mel: torch.Tensor, options: TranscribeOptions, beam_size: int | None,
                 n_text_ctx: int) -> None:
        self.mel = mel  # (n_mels, frames + N_FRAMES): log_mel_spectrogram(padding=N_SAMPLES)
        self.options = options
        self.beam_size = beam_size
        self.n_ctx = n_text_ctx
        self.content_frames = int(mel.shape[-1]) - WINDOW_FRAMES
        self.seek: int = 0
        self.language = options.language
        self.tokenizer: Tokenizer | None = None
        self.all_tokens: list[int] = []
        self.initial_prompt_tokens: list[int] = []
        self.prompt_reset_since = 0
        self.segments: list[dict[str, Any]] = []
        self.last_speech_timestamp = 0.0
        self.window: torch.Tensor | None = None  # the current window's mel (n_mels, window_frames)
        self.segment_size = 0
        self.temperature_index = 0
        self.temperatures = temperature_schedule(options.temperature) if options.fallback \
            else (options.temperature,)
        self.rejected = False  # the window failed whisper's checks with no fallback left to try
        self.reported = 0  # segments already handed to the request's listener (streaming)
        self.speech_regions: Sequence[SpeechRegion] | None = None  # the VAD's (None: no VAD)
        self.decisions: list[tuple[int, float, bool]] = []  # per window: seek, temperature, skipped
        self.unheard: list[int] = []  # seeks of windows skipped unencoded: the VAD hears nothing there
        self.draws: torch.Generator | None = None  # made at the first sampled search, on its device

    @property
    def finished(self) -> bool:
        return self.seek >= self.content_frames

    @property
    def window_frames(self) -> int:
        """The current window's mel frames: 30 s, or fitted to its audio (whisper's word alignment
        takes 30 s only)."""
        if not self.options.fit_window or self.options.word_timestamps:
            return WINDOW_FRAMES
        second = int(FRAMES_PER_SECOND)
        return min(WINDOW_FRAMES, -(-(self.segment_size + FIT_SILENCE_FRAMES) // second) * second)

    def next_window(self) -> torch.Tensor | None:
        """The next window's mel, 30 s (or fitted: ``window_frames``); None once the audio is done.

        A window in which the VAD hears no speech at all is passed over without running the
        model, as transcribe() passes over a window it judges silent (the seek moves a whole
        window on, nothing joins the prompt). Nothing it could hold would be kept: the
        answer drops every segment outside speech.
        """
        while not self.finished:
            frames = min(WINDOW_FRAMES, self.content_frames - self.seek)
            start, end = self.seek / FRAMES_PER_SECOND, (self.seek + frames) / FRAMES_PER_SECOND
            if self.speech_regions is None or overlaps_speech(start, end, self.speech_regions):
                break
            self.unheard.append(self.seek)
            self.seek += frames
        if self.finished:
            self.window = None
            return None
        self.segment_size = min(WINDOW_FRAMES, self.content_frames - self.seek)
        self.window = pad_or_trim(self.mel[:, self.seek: self.seek + self.segment_size], self.window_frames)
        self.temperature_index = 0
        self.rejected = False
        return self.window

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Once the language is known (given, or detected on the first window)."""
        self.tokenizer = tokenizer
        self.language = tokenizer.language
        if self.options.prompt is not None and not self.initial_prompt_tokens:
            self.initial_prompt_tokens = tokenizer.encode(" " + self.options.prompt.strip())
            self.all_tokens = list(self.initial_prompt_tokens)

    def search(self, device: torch.device) -> WindowSearch:
        """The search for the current window at the current temperature; ``device``: the model's, where
        a sampled search's generator must be."""
        assert self.tokenizer is not None
        temperature = self.temperatures[self.temperature_index]
        spec = (SearchSpec(temperature, beam_size=self.beam_size) if temperature == 0
                else SearchSpec(temperature, best_of=BEST_OF))
        if temperature > 0 and self.draws is None:
            self.draws = torch.Generator(device=device).manual_seed(SAMPLING_SEED)
        forced = self._forced()
        prompt = self.all_tokens[self.prompt_reset_since:]
        initial = list(self.tokenizer.sot_sequence)
        if prompt:  # the forced words take room from the prompt, not from what is left to decode
            initial = [self.tokenizer.sot_prev, *prompt[-(self.n_ctx // 2 - 1 - len(forced)):], *initial]
        stamps = [token for token in forced if token >= self.tokenizer.timestamp_begin]
        sample_len = min(self.n_ctx // 2, self.options.sample_len or self.n_ctx)
        return WindowSearch(spec, initial, initial.index(self.tokenizer.sot), sample_len, self.n_ctx,
                            self.draws if temperature > 0 else None, forced,
                            stamps[-1] if stamps else NO_STAMP)

    def _forced(self) -> list[int]:
        """The options' prefix as the first tokens of the window at the audio's start: a timestamp at
        0 s, then its text (none that would crowd the window's own text out)."""
        assert self.tokenizer is not None
        if not self.options.prefix or self.seek != 0:
            return []
        forced = [self.tokenizer.timestamp_begin, *self.tokenizer.encode(" " + self.options.prefix.strip())]
        return forced if len(forced) < self.n_ctx // 2 - 1 else []

    def judge(self, result: WindowResult) -> bool:
        """whisper's decode_with_fallback: must the window be decoded again, at the next temperature?"""
        needs_fallback = (result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
                          or result.avg_logprob < LOGPROB_THRESHOLD)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob < LOGPROB_THRESHOLD:
            needs_fallback = False  # silence
        if needs_fallback and self.temperature_index + 1 < len(self.temperatures):
            self.temperature_index += 1
            return True
        # Without fallbacks (a live hypothesis), a window that fails is judged a hallucination: no text.
        self.rejected = needs_fallback and not self.options.fallback
        return False

    def is_silent(self, result: WindowResult) -> bool:
        return result.no_speech_prob > NO_SPEECH_THRESHOLD and not result.avg_logprob > LOGPROB_THRESHOLD

    def accept(self, result: WindowResult, add_words: AddWords) -> None:
        """The window's final result: its segments, and the seek moved on, as transcribe() does."""
        assert self.tokenizer is not None and self.window is not None
        self.decisions.append((self.seek, result.temperature, self.is_silent(result)))
        if self.is_silent(result) or self.rejected:
            self.seek += self.segment_size  # fast-forward to the next window
            return
        tokenizer, tokens = self.tokenizer, list(result.tokens)
        begin = tokenizer.timestamp_begin
        time_offset = self.seek * HOP_LENGTH / SAMPLE_RATE
        is_stamp = [token >= begin for token in tokens]
        single_timestamp_ending = is_stamp[-2:] == [False, True]
        consecutive = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
        current: list[dict[str, Any]] = []

        def segment(start: float, end: float, part: list[int]) -> dict[str, Any]:
            return {"seek": self.seek, "start": start, "end": end, "tokens": part,
                    "text": tokenizer.decode([t for t in part if t < tokenizer.eot])}

        if consecutive:
            slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
            last_slice = 0
            for current_slice in slices:
                part = tokens[last_slice:current_slice]
                current.append(segment(time_offset + (part[0] - begin) * TIME_PRECISION,
                                       time_offset + (part[-1] - begin) * TIME_PRECISION, part))
                last_slice = current_slice
            if single_timestamp_ending:
                self.seek += self.segment_size
            else:
                self.seek += (tokens[last_slice - 1] - begin) * INPUT_STRIDE
        else:
            duration = self.segment_size * HOP_LENGTH / SAMPLE_RATE
            stamps = [token for token in tokens if token >= begin]
            if stamps and stamps[-1] != begin:
                duration = (stamps[-1] - begin) * TIME_PRECISION
            current.append(segment(time_offset, time_offset + duration, tokens))
            self.seek += self.segment_size

        if self.options.word_timestamps:
            add_words(current, tokenizer, self.window, self.segment_size, self.last_speech_timestamp)
            last_word_end = _last_end(current)
            if not single_timestamp_ending and last_word_end is not None and last_word_end > time_offset:
                self.seek = round(last_word_end * FRAMES_PER_SECOND)
            if last_word_end is not None:
                self.last_speech_timestamp = last_word_end

        for seg in current:  # instantaneous or empty: cleared
            if seg["start"] == seg["end"] or seg["text"].strip() == "":
                seg["text"], seg["tokens"], seg["words"] = "", [], []
        self.segments += current
        self.all_tokens += [token for seg in current for token in seg["tokens"]]
        if result.temperature > 0.5:  # a prompt decoded that hot is not fed again
            self.prompt_reset_since = len(self.all_tokens)


def _last_end(segments: list[dict[str, Any]]) -> float | None:
    """whisper.utils.get_end: the last word's end, else the last segment's."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.get("words", []))),
                segments[-1]["end"] if segments else None)
