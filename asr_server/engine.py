"""All torch code: load the Whisper checkpoint on its device and turn 16 kHz samples into a Transcription.

openai-whisper does the decoding (``whisper.transcribe``: 30 s windows,
temperature fallback, no-speech handling, timestamps). This module adds what
a server needs around it: an explicit device and dtype, language detection
restricted to the supported languages, the VAD gate, and batches of requests
whose decode calls meet (batching.py) and run on the grouped-cache decoder
(inference.py). Not thread-safe:
only the scheduler's worker thread calls ``transcribe``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingResult, detect_language
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE, Tokenizer, get_tokenizer

from asr_server.batching import DecodeRendezvous, current_rendezvous
from asr_server.inference import decode as decode_function
from asr_server.protocol import SUPPORTED_LANGUAGES, Segment, TranscribeOptions, Transcription
from asr_server.vad import SpeechDetector, SpeechRegion, overlaps_speech

log = logging.getLogger(__name__)

# whisper's CLI defaults: beam search, then sampling at rising temperatures
# when a window fails the compression-ratio or log-probability checks.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5


# Whisper cuts its segments wherever a 30 s window or a timestamp token falls,
# often mid-sentence; clients want a segment per sentence.
_SENTENCE_END = re.compile(r"[.?!…。？！]['\"”’»)\]]*$")
MAX_JOINED_SEGMENT_S = 30.0
MAX_JOIN_GAP_S = 1.0


class ModelNotFound(FileNotFoundError):
    """The configured checkpoint does not exist."""


@dataclass(frozen=True)
class EngineSettings:
    model_path: Path
    device: str  # auto | cpu | cuda | cuda:N
    threads: int
    beam_size: int  # 1: greedy
    vad: bool = True
    quantize: str = "none"  # none | int8: dynamic int8 Linear layers, CPU only


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ASR_DEVICE={setting} but torch sees no CUDA device")
    return device


class SupportedLanguagesWhisper(Whisper):  # type: ignore[misc]
    """Whisper whose language detection only chooses among SUPPORTED_LANGUAGES.

    Without this, Bulgarian is often detected as Macedonian and Ukrainian as
    Russian's neighbours outside the list, which the server could not honour.
    """

    _language_tokenizer: Tokenizer | None = None

    def decode(self, mel: torch.Tensor, options: DecodingOptions | None = None) -> Any:
        """Inside a batch, decode calls meet at the batch's rendezvous (batching.py)."""
        options = options or DecodingOptions()
        rendezvous = current_rendezvous()
        if rendezvous is None:
            return decode_function(self, mel, options)
        return rendezvous.decode(mel, options)

    def detect_language(
        self, mel: torch.Tensor, tokenizer: Tokenizer | None = None
    ) -> tuple[torch.Tensor, Any]:
        tokens, probs = detect_language(self, mel, self.language_tokenizer())
        return tokens, probs

    def language_tokenizer(self) -> Tokenizer:
        if self._language_tokenizer is None:
            base = get_tokenizer(True, num_languages=self.num_languages, language="en")
            restricted = dataclasses.replace(base)  # a copy: get_tokenizer's result is shared
            codes = tuple(c for c in LANGUAGES if c in SUPPORTED_LANGUAGES)
            restricted.__dict__["all_language_codes"] = codes
            restricted.__dict__["all_language_tokens"] = tuple(
                restricted.to_language_token(c) for c in codes
            )
            self._language_tokenizer = restricted
        return self._language_tokenizer


def load_model(path: Path, device: torch.device) -> SupportedLanguagesWhisper:
    """Load a checkpoint written by ``weights.py`` (or whisper's own format) onto ``device``."""
    if not path.is_file():
        raise ModelNotFound(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = SupportedLanguagesWhisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    if checkpoint.get("alignment_heads") is not None:
        model.set_alignment_heads(checkpoint["alignment_heads"])
    # fp32 weights on every device; on CUDA whisper runs fp16 activations and
    # casts the weights per op, as openai-whisper itself does.
    return cast(SupportedLanguagesWhisper, model.to(device).eval())


def quantize_int8(model: SupportedLanguagesWhisper) -> SupportedLanguagesWhisper:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised per call).

    Weights get a scale per output channel: one per matrix cost twice the WER (docs/accuracy.md).

    whisper's own Linear subclass only casts weights to the input's dtype, a no-op in
    float32, so it is swapped for torch's plain Linear, which the quantiser knows.
    """
    def plain(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, whisper.model.Linear):
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.load_state_dict(child.state_dict())
                setattr(module, name, linear)
            else:
                plain(child)

    plain(model)
    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it moves to torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return cast(SupportedLanguagesWhisper, quantized)


class Engine:
    """One Whisper model and one VAD, owned by the worker thread."""

    def __init__(self, settings: EngineSettings) -> None:
        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.fp16 = self.device.type == "cuda"
        started = time.monotonic()
        self.model = load_model(settings.model_path, self.device)
        if settings.quantize == "int8":
            if self.device.type != "cpu":
                raise RuntimeError("ASR_QUANTIZE=int8 is for the CPU; on CUDA the model runs in float16")
            self.model = quantize_int8(self.model)
        self.vad = SpeechDetector() if settings.vad else None
        torch.set_num_threads(settings.threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self.load_seconds = time.monotonic() - started
        log.info("model %s loaded on %s (%s) in %.1f s", settings.model_path.name, self.device,
                 "float16" if self.fp16 else "float32", self.load_seconds)

    @property
    def dtype_name(self) -> str:
        if self.settings.quantize == "int8":
            return "int8"
        return "float16" if self.fp16 else "float32"

    def warm_up(self) -> None:
        """One short pass of each model so the first request does not pay for lazy initialisation."""
        silence = np.zeros(16_000, dtype=np.float32)
        if self.vad:
            self.vad.speech_regions(silence)
        self._transcribe(silence, TranscribeOptions("en", "transcribe"), None)

    def transcribe(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription:
        """One request on its own: a batch of one."""
        result = self.transcribe_batch([(samples, options)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def transcribe_batch(
        self, items: list[tuple[np.ndarray, TranscribeOptions]]
    ) -> list[Transcription | Exception]:
        """Several requests at once: their decode calls are batched, their results kept apart.

        Each entry is the request's Transcription, or the exception that failed it alone.
        """
        results: list[Transcription | Exception | None] = [None] * len(items)
        speech: list[tuple[int, list[SpeechRegion] | None]] = []
        for i, (samples, options) in enumerate(items):
            regions = self.vad.speech_regions(samples) if self.vad else None
            if regions is not None and not regions:
                results[i] = self._no_speech(samples, options)
            else:
                speech.append((i, regions))
        if len(speech) == 1:
            i, regions = speech[0]
            results[i] = self._guarded(items[i][0], items[i][1], regions)
        elif speech:
            rendezvous = DecodeRendezvous(len(speech))

            def run(i: int, regions: list[SpeechRegion] | None) -> None:
                results[i] = rendezvous.run(lambda: self._guarded(items[i][0], items[i][1], regions))

            # Every participant must run at once (the rendezvous waits for all of them).
            futures = [self._participants(len(speech)).submit(run, *entry) for entry in speech]
            rendezvous.serve(self._decode_batch)
            for future in futures:
                future.result()
        return [r if r is not None else RuntimeError("no result") for r in results]

    def _participants(self, count: int) -> ThreadPoolExecutor:
        """Long-lived threads for a batch's requests, each on one OpenMP thread.

        They only do whisper's bookkeeping (mels, prompts, results); the model runs on the
        worker's own thread and team (batching.py). An OpenMP team per participant would
        give libgomp more threads than CPUs, and it then stops spinning in every team, the
        worker's too: single requests after the first batch ran about 35% slower.
        """
        if self._pool is None or self._pool_size < count:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(count, thread_name_prefix="asr-batch",
                                            initializer=_one_openmp_thread)
            self._pool_size = count
        return self._pool

    def _guarded(self, samples: np.ndarray, options: TranscribeOptions,
                 regions: list[SpeechRegion] | None) -> Transcription | Exception:
        try:
            return self._transcribe(samples, options, regions)
        except Exception as exc:  # reported to this request's caller only
            return exc

    def _decode_batch(self, mel: torch.Tensor, options: DecodingOptions,
                      languages: list[str | None]) -> list[DecodingResult]:
        # The participants set torch's default for new threads to 1 when they started; every
        # participant has started by now. Put back the default, and this thread's own count.
        torch.set_num_threads(self.settings.threads)
        try:
            with torch.inference_mode():
                results = decode_function(self.model, mel, options, languages)
        except torch.cuda.OutOfMemoryError:
            # Give the cached blocks back before the scheduler retries this batch in halves.
            torch.cuda.empty_cache()
            raise
        assert isinstance(results, list)
        return results

    def _no_speech(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription:
        seconds = len(samples) / whisper.audio.SAMPLE_RATE
        log.debug("VAD found no speech in %.1f s: the model is not run", seconds)
        return Transcription(text="", segments=(), language=options.language or "")

    def _transcribe(self, samples: np.ndarray, options: TranscribeOptions,
                    regions: list[SpeechRegion] | None) -> Transcription:
        duration = len(samples) / whisper.audio.SAMPLE_RATE
        beam = self.settings.beam_size
        with torch.inference_mode():
            result = whisper.transcribe(
                self.model,
                torch.from_numpy(samples).to(self.device),
                verbose=None,
                temperature=TEMPERATURES,
                language=options.language,
                task=options.task,
                beam_size=beam if beam > 1 else None,
                best_of=BEST_OF,
                fp16=self.fp16,
                condition_on_previous_text=True,
            )
        segments = []
        for seg in result["segments"]:
            text = seg["text"].strip()
            start, end = float(seg["start"]), min(float(seg["end"]), duration)
            if not text or (regions is not None and not overlaps_speech(start, end, regions)):
                continue
            segments.append(Segment(text=text, start=round(start, 3), end=round(max(start, end), 3)))
        segments = join_sentences(segments)
        language = str(result["language"])
        language = TO_LANGUAGE_CODE.get(language, language)
        return Transcription(
            text=" ".join(s.text for s in segments),  # every supported language spaces its words
            segments=tuple(segments),
            language=language,
        )

def _one_openmp_thread() -> None:
    """This thread's torch ops run on it alone (OpenMP keeps a thread count per thread)."""
    torch.set_num_threads(1)


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
                joined[-1] = Segment(f"{last.text} {seg.text}", last.start, seg.end)
                continue
        joined.append(seg)
    return joined
