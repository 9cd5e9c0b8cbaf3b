"""The engine: the Whisper checkpoint on its device, the VAD gate, and requests in and answers out.

The decoding itself is the loop's (decoding_loop.py): this module loads the
model (its device and dtype: model_loading.py), turns a request's samples into its mel and
windows (or an empty answer at once, when the VAD hears no speech), and a
finished request's segments into the answer: segments outside speech
dropped, whisper's pieces joined into sentences, words kept with them.
Not thread-safe: only the scheduler's worker thread calls ``serve``,
``transcribe`` and ``transcribe_batch``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.model import Whisper
from whisper.tokenizer import TO_LANGUAGE_CODE

from asr_server.contract.domain import Segment, TranscribeOptions, Transcription, Word
from asr_server.engine.cpu_linear import onednn_available, pack_bf16, quantize_int8
from asr_server.engine.decoding_loop import DecodingLoop
from asr_server.engine.job import UNCHECKED, UNGATED, Job, Source, Speech
from asr_server.engine.model_loading import (
    DTYPES,
    claim_device,
    load_model,
    native_bf16_flags,
    resolve_device,
    resolve_precision,
)
from asr_server.engine.transcribe_state import RequestWindows
from asr_server.engine.vad import SpeechDetector, overlaps_speech
from asr_server.engine.word_timing import mel_of

log = logging.getLogger(__name__)

# Whisper cuts its segments wherever a 30 s window or a timestamp token falls,
# often mid-sentence; clients want a segment per sentence.
_SENTENCE_END = re.compile(r"[.?!…。？！]['\"”’»)\]]*$")
MAX_JOINED_SEGMENT_S = 30.0
MAX_JOIN_GAP_S = 1.0


@dataclass(frozen=True)
class EngineSettings:
    model_path: Path
    device: str  # auto | cpu | cuda | cuda:N
    threads: int
    beam_size: int  # 1: greedy
    vad: bool = True
    precision: str = "auto"  # auto | exact | int8 | bfloat16 | float16 (model_loading.py)
    # How a decoder pass attends (forward.py): None picks batched on CUDA, per window on the CPU.
    batched_attention: bool | None = None
    max_batch: int = 8  # requests decoded at once: the static cache's slots (forward.py)
    cuda_graphs: bool = True  # on CUDA with batched attention: replay captured passes (cuda_graphs.py)
    # bf16 on the CPU: the Linear layers packed for oneDNN (cpu_linear.py), the same bits; False
    # only to measure what packing gains (scripts/batch_profile.py --unpacked).
    pack_bf16: bool = True


@dataclass(eq=False)
class ListedRequest:
    """A request handed over by a caller that holds a list of them (``transcribe_batch``, scripts)."""

    samples: np.ndarray
    options: TranscribeOptions
    speech: Speech = UNCHECKED  # UNGATED: run the model on all of it
    on_segments: Callable[[list[Segment]], None] | None = None
    result: Transcription | Exception | None = None
    abandoned: bool = False

    def settle(self, result: Transcription | None, error: BaseException | None) -> None:
        self.result = result if result is not None else error if isinstance(error, Exception) \
            else RuntimeError(str(error))


@dataclass
class _ListSource:
    waiting: list[ListedRequest]
    taken: int = field(default=0)

    def next(self, block: bool) -> ListedRequest | None:
        if self.taken == len(self.waiting):
            return None
        self.taken += 1
        return self.waiting[self.taken - 1]


class Engine:
    """One Whisper model, one VAD and the decoding loop, owned by the worker thread."""

    def __init__(self, settings: EngineSettings, model: Whisper | None = None) -> None:
        """``model``: the checkpoint already loaded on its device in the settings' dtype (else loaded)."""
        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        claim_device(self.device)
        self.precision = self._precision(settings)
        self.dtype = DTYPES[self.precision]
        started = time.monotonic()
        self.model = model if model is not None else load_model(settings.model_path, self.device, self.dtype)
        if self.precision == "int8":
            self.model = quantize_int8(self.model)
        elif (self.precision == "bfloat16" and self.device.type == "cpu" and settings.pack_bf16
              and onednn_available()):
            self.model = pack_bf16(self.model)
        self.vad = SpeechDetector() if settings.vad else None
        batched = settings.batched_attention
        self.loop = DecodingLoop(self.model, settings.max_batch,
                                 settings.beam_size if settings.beam_size > 1 else None,
                                 self.dtype, self.device.type == "cuda" if batched is None else batched,
                                 self._prepare, self._finish, self._progress, settings.cuda_graphs)
        self.load_seconds = time.monotonic() - started
        log.info("model %s loaded on %s (%s) in %.1f s; KV cache of %d slots reserved: %.0f MiB",
                 settings.model_path.name, self.device, self.precision, self.load_seconds,
                 settings.max_batch, self.cache_bytes / 2**20)

    @property
    def cache_bytes(self) -> int:
        return self.loop.caches.reserved_bytes

    def _precision(self, settings: EngineSettings) -> str:
        native = native_bf16_flags() if self.device.type == "cpu" else ()
        precision = resolve_precision(settings.precision, self.device, native)
        if self.device.type == "cpu":
            log.info("CPU bf16 support: %s; ASR_PRECISION=%s runs at %s (docs/accuracy.md)",
                     " ".join(native) or "none (no amx_bf16 or avx512_bf16 flag)", settings.precision,
                     precision)
        return precision

    def warm_up(self) -> None:
        """Every path a request can take, once, so the first user's request compiles nothing: the VAD,
        language detection and a decode, then whisper's word alignment (its DTW is compiled on first
        use: numba on the CPU, Triton kernels on CUDA). On CUDA, every bucket's graph is captured first."""
        silence = np.zeros(16_000, dtype=np.float32)
        if self.loop.graphs is not None:
            self.loop.graphs.capture_all()
        if self.vad:
            self.vad.speech_regions(silence)
        self._run([ListedRequest(silence, TranscribeOptions(None, "transcribe"), UNGATED)])
        self.loop.warm_up_words()

    def serve(self, source: Source, capacity: int, observe_pass: Callable[[int], None]) -> None:
        """The worker's life: every request from ``source``, up to ``capacity`` at once (decoding_loop.py)."""
        self.loop.serve(source, capacity, observe_pass)

    def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription:
        """One request on its own."""
        result = self.transcribe_batch([(samples, options)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(self, items: list[tuple[np.ndarray, TranscribeOptions]],
                         capacity: int | None = None) -> list[Transcription | Exception]:
        """Several requests, up to ``capacity`` at once (all of them by default); each entry is the
        request's Transcription, or the exception that failed it alone."""
        return self._run([ListedRequest(samples, options) for samples, options in items], capacity)

    def _run(self, requests: list[ListedRequest],
             capacity: int | None = None) -> list[Transcription | Exception]:
        self.loop.serve(_ListSource(requests), capacity or len(requests), lambda size: None)
        return [r.result if r.result is not None else RuntimeError("no result") for r in requests]

    def speech(self, samples: np.ndarray, cancelled: threading.Event | None = None) -> Speech:
        """The speech gate's verdict (onnxruntime, no torch: the scheduler asks it off the worker);
        once ``cancelled`` is set it stops at its next block (``vad.GateCancelled``)."""
        if self.vad is None:
            return UNGATED
        return Speech(checked=True, regions=self.vad.speech_regions(samples, cancelled))

    def _prepare(self, work: Job) -> RequestWindows | Transcription:
        samples, options = work.samples, work.options
        speech = work.speech if work.speech.checked else self.speech(samples)
        regions = speech.regions
        if regions is not None and not regions:
            log.debug("VAD found no speech in %.1f s: the model is not run", len(samples) / 16_000)
            return Transcription(text="", segments=(), language=options.language or "")
        mel = mel_of(torch.from_numpy(samples).to(self.device), self.model.dims.n_mels)
        beam = self.loop.beam_size if options.beam_size is None else options.beam_size
        windows = RequestWindows(mel, options, beam if beam and beam > 1 else None,
                                 self.model.dims.n_text_ctx)
        windows.speech_regions = regions
        return windows

    def _progress(self, work: Job, windows: RequestWindows) -> None:
        """Hand the segments that just became final to a request that listens (``on_segments``)."""
        listener = work.on_segments
        if listener is None:
            return
        fresh, windows.reported = windows.segments[windows.reported:], len(windows.segments)
        if kept := self._kept(work, windows, fresh):
            listener(kept)

    def _finish(self, work: Job, windows: RequestWindows) -> Transcription:
        segments = join_sentences(self._kept(work, windows, windows.segments))
        language = windows.language or ""
        return Transcription(
            text=" ".join(s.text for s in segments),  # every supported language spaces its words
            segments=tuple(segments),
            language=TO_LANGUAGE_CODE.get(language, language),
        )

    def _kept(self, work: Job, windows: RequestWindows, raw: list[dict[str, Any]]) -> list[Segment]:
        """whisper's segments as the answer has them: stripped, inside the audio and the speech."""
        duration = len(work.samples) / whisper.audio.SAMPLE_RATE
        regions = windows.speech_regions
        segments = []
        for seg in raw:
            text = seg["text"].strip()
            start, end = float(seg["start"]), min(float(seg["end"]), duration)
            if not text or (regions is not None and not overlaps_speech(start, end, regions)):
                continue
            start, end = round(start, 3), round(max(start, end), 3)
            words = None
            if windows.options.word_timestamps:
                # whisper may let a first or last word reach past its segment; the segment's
                # times are kept and its words held inside them.
                words = tuple(Word(w["word"], min(max(round(float(w["start"]), 3), start), end),
                                   min(max(round(float(w["end"]), 3), start), end),
                                   round(float(w["probability"]), 3)) for w in seg.get("words", []))
            segments.append(Segment(text=text, start=start, end=end, words=words))
        return segments


def join_sentences(segments: list[Segment]) -> list[Segment]:
    """Join Whisper's segments so each ends where a sentence ends; times stay Whisper's own.

    A segment is continued only while the previous one does not end a
    sentence, the gap between them is short and the result stays under
    ``MAX_JOINED_SEGMENT_S``: unpunctuated speech still comes in pieces.
    """
    joined: list[Segment] = []
    for seg in segments:
        if joined:
            last = joined[-1]
            if (not _SENTENCE_END.search(last.text) and seg.start - last.end <= MAX_JOIN_GAP_S
                    and seg.end - last.start <= MAX_JOINED_SEGMENT_S):
                words = None if last.words is None or seg.words is None else last.words + seg.words
                joined[-1] = Segment(f"{last.text} {seg.text}", last.start, seg.end, words)
                continue
        joined.append(seg)
    return joined
