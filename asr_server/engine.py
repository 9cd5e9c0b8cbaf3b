"""All torch code: load the Whisper checkpoint on its device and turn 16 kHz samples into a Transcription.

openai-whisper does the decoding (``whisper.transcribe``: 30 s windows,
temperature fallback, no-speech handling, timestamps). This module adds what
a server needs around it: an explicit device and dtype, language detection
restricted to the supported languages, the VAD gate, and batches of requests
(continuous, batching.py, or by decode call, call_batching.py) whose model
work runs on the worker thread, on the grouped-cache decoder (inference.py).
Not thread-safe: only the scheduler's worker thread calls ``transcribe``,
``transcribe_batch`` and ``transcribe_continuously``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingResult, detect_language
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE, Tokenizer, get_tokenizer

from asr_server.batching import DecoderSteps, current_steps
from asr_server.call_batching import DecodeRendezvous, current_rendezvous
from asr_server.inference import decode as decode_function
from asr_server.inference import decode_stepped, decoder_step
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
    batching: str = "auto"  # steps | calls | auto: steps on the CPU, calls on CUDA


def batches_steps(batching: str, device: torch.device) -> bool:
    """Continuous batching (batching.py) or whole decode calls (call_batching.py)?"""
    if batching not in ("auto", "steps", "calls"):
        raise ValueError(f"batching {batching!r}: auto, steps or calls")
    return batching == "steps" or (batching == "auto" and device.type == "cpu")


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
        """Inside a continuous batch, the decode's model work is done by its worker (batching.py);
        inside a batch of decode calls, the call meets the others (call_batching.py)."""
        options = options or DecodingOptions()
        if (steps := current_steps()) is not None:
            return decode_stepped(self, mel, options, steps)
        if (rendezvous := current_rendezvous()) is not None:
            return rendezvous.decode(mel, options)
        return decode_function(self, mel, options)

    def detect_language(
        self, mel: torch.Tensor, tokenizer: Tokenizer | None = None
    ) -> tuple[torch.Tensor, Any]:
        steps = current_steps()
        if steps is not None:
            return steps.call(lambda: self.detect_language_here(mel))
        return self.detect_language_here(mel)

    def detect_language_here(self, mel: torch.Tensor) -> tuple[torch.Tensor, Any]:
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


class Request(Protocol):
    """A request as the scheduler hands it over: its audio, options, and where its result goes."""

    samples: np.ndarray
    options: TranscribeOptions

    def settle(self, result: Transcription | None, error: BaseException | None) -> None: ...


@dataclass(eq=False)
class ListedRequest:
    """A request handed over by a caller that holds a list of them (``transcribe_batch``, scripts)."""

    samples: np.ndarray
    options: TranscribeOptions
    result: Transcription | Exception | None = None

    def settle(self, result: Transcription | None, error: BaseException | None) -> None:
        self.result = result if result is not None else error if isinstance(error, Exception) \
            else RuntimeError(str(error))


class Engine:
    """One Whisper model and one VAD, owned by the worker thread."""

    def __init__(self, settings: EngineSettings) -> None:
        torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.fp16 = self.device.type == "cuda"
        self.continuous = batches_steps(settings.batching, self.device)
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
        """Several requests at once, batched continuously or by decode call (``continuous``);
        each entry is the request's Transcription, or the exception that failed it alone."""
        if len(items) == 1:
            return [self._guarded(*items[0])]
        if not self.continuous:
            return self._transcribe_by_decode_calls(items)
        requests = [ListedRequest(samples, options) for samples, options in items]
        waiting = list(reversed(requests))
        self.transcribe_continuously(lambda: waiting.pop() if waiting else None, len(items))
        return [r.result if r.result is not None else RuntimeError("no result") for r in requests]

    def transcribe_continuously(self, take: Callable[[], Request | None], capacity: int,
                                observe_step: Callable[[int], None] = lambda size: None) -> None:
        """Transcribe the requests ``take`` gives, up to ``capacity`` at once, until it gives None.

        Each request runs in a participant thread as soon as a place is free,
        and is settled the moment it is done; their model work runs on this
        thread, their decoder steps batched (batching.py).
        """
        steps = DecoderSteps()
        places = threading.Semaphore(capacity)
        participants = self._participants(capacity)

        def participate(request: Request) -> None:
            try:
                result = steps.run(lambda: self._guarded(request.samples, request.options))
            finally:
                places.release()
            if isinstance(result, Exception):
                request.settle(None, result)
            else:
                request.settle(result, None)

        def admit() -> None:
            try:
                while places.acquire() and (request := take()) is not None:
                    steps.join()
                    participants.submit(participate, request)
            finally:
                steps.close()

        admitter = threading.Thread(target=admit, name="asr-admit", daemon=True)
        admitter.start()
        with torch.inference_mode():
            steps.serve(self._decoder_step, self._worker_threads, observe_step)
        # Not after a failure: the admitter then ends when take() gives None, and whatever
        # it still takes fails at once (batching.py).
        admitter.join()

    def _participants(self, count: int) -> ThreadPoolExecutor:
        """Long-lived threads for a batch's requests, each on one OpenMP thread.

        They do whisper's bookkeeping (mels, prompts, the search, results); the model runs on
        the worker's own thread and team (batching.py). An OpenMP team per participant would
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

    def _transcribe_by_decode_calls(
        self, items: list[tuple[np.ndarray, TranscribeOptions]]
    ) -> list[Transcription | Exception]:
        results: list[Transcription | Exception | None] = [None] * len(items)
        rendezvous = DecodeRendezvous(len(items))

        def run(i: int) -> None:
            results[i] = rendezvous.run(lambda: self._guarded(*items[i]))

        # Every participant must run at once (the rendezvous waits for all of them).
        futures = [self._participants(len(items)).submit(run, i) for i in range(len(items))]
        rendezvous.serve(self._decode_calls)
        for future in futures:
            future.result()
        return [r if r is not None else RuntimeError("no result") for r in results]

    def _decode_calls(self, mel: torch.Tensor, options: DecodingOptions,
                      languages: list[str | None]) -> list[DecodingResult]:
        self._worker_threads()
        try:
            with torch.inference_mode():
                results = decode_function(self.model, mel, options, languages)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the cached blocks back before the batch is retried in halves
            raise
        assert isinstance(results, list)
        return results

    @staticmethod
    def _decoder_step(states: Sequence[Any], tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        try:
            return decoder_step(states, tokens)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the cached blocks back before the step is retried in halves
            raise

    def _worker_threads(self) -> None:
        # A participant sets torch's default for new threads to 1 when it starts: put back
        # the default, and this thread's own count, before the model runs.
        torch.set_num_threads(self.settings.threads)

    def _guarded(self, samples: np.ndarray, options: TranscribeOptions) -> Transcription | Exception:
        try:
            regions = self.vad.speech_regions(samples) if self.vad else None
            if regions is not None and not regions:
                return self._no_speech(samples, options)
            return self._transcribe(samples, options, regions)
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()  # give the cached blocks back before anyone retries
            return exc
        except Exception as exc:  # reported to this request's caller only
            return exc

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
    """This thread's torch ops run on it alone (OpenMP keeps a thread count per thread).

    torch sets a thread's count once more, lazily (at its first ``get_num_threads`` or
    parallel op), to the count last set anywhere in the process: the worker's, which it
    sets before every round. That lazy setting is made to happen here, before the count
    is set to 1; otherwise participants ran with the worker's team size.
    """
    torch.get_num_threads()
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
