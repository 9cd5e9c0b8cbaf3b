"""The one decoding loop: the worker thread runs every request's windows, the same on every device.

Each iteration of ``DecodingLoop.serve``:

1. admits waiting requests, up to ``capacity`` running at once (it blocks
   for one only when nothing runs);
2. drops the requests whose caller has gone;
3. encodes the windows that need it (one at a time on the CPU, where the
   encoder is compute-bound; stacked on CUDA, by length), opens a cache slot for each
   and runs its prompt; a request without a language has it detected on
   its first window's encoding;
4. runs one decoder pass for every live sequence of every request: one copy
   to the device (pass_plan.make_plan), the beams' last moves in the cache
   (forward.rearrange), the pass (forward.step), the tokens chosen on the
   device and read back once, every search one token on (pass_plan.advance);
5. settles each finished search by whisper's rules (transcribe_state.py): decode
   the window again at the next temperature, or cut it into segments, move
   the seek on and start the next window, or answer the request at once.

Faults, by kind, wherever in an iteration they come (the encoder, a slot's
opening, a prompt, the pass, the searches' advance and the caches'
rearrangement, word alignment):

- out of memory: the failed encode or pass is run again in halves, down to
  one window, which traces it to the requests it belongs to; a window that
  cannot run alone fails its request alone (and an advance that fails after
  its pass, the requests of that pass);
- a device fault (a CUDA error, a device-side assert: the context may be
  unusable for every later call) is fatal: ``DeviceFailed`` ends ``serve``,
  the scheduler answers every held request ``internal_error`` and the
  process exits 70 for systemd to restart it;
- anything else fails the requests it came from (on the CPU, one request's
  bad audio fails that request), and the loop goes on serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer, get_tokenizer

from asr_server.contract.domain import Transcription
from asr_server.engine import forward, kv_cache
from asr_server.engine.cuda_graphs import GraphedPasses
from asr_server.engine.faults import is_out_of_memory, raise_if_device_fault
from asr_server.engine.job import Job, Source
from asr_server.engine.pass_plan import Entry, advance, make_plan
from asr_server.engine.search import WindowSearch
from asr_server.engine.token_choice import Rules
from asr_server.engine.transcribe_state import BEST_OF, RequestWindows
from asr_server.engine.whisper_compat import detect_language, restricted_language_tokenizer
from asr_server.engine.word_timing import WordTiming

log = logging.getLogger(__name__)


# What the engine does around the loop: audio to windows (or an answer at once), windows to an answer.
Prepare = Callable[[Job], RequestWindows | Transcription]
Finish = Callable[[Job, RequestWindows], Transcription]
Progress = Callable[[Job, RequestWindows], None]  # after each window is final (streaming)


@dataclass(eq=False)
class _Running:
    work: Job
    windows: RequestWindows
    slot: int | None = None
    search: WindowSearch | None = None
    moves: list[int] | None = None  # beam search: the rows its last advance moved, not yet in the cache
    windows_done: int = field(default=0)


class DecodingLoop:
    """Owns the model's passes for every running request; only the worker thread calls ``serve``."""

    def __init__(self, model: Whisper, slots: int, beam_size: int | None, dtype: torch.dtype,
                 batched_attention: bool,
                 prepare: Prepare, finish: Finish, progress: Progress = lambda work, windows: None,
                 cuda_graphs: bool = False) -> None:
        """``cuda_graphs``: replay captured passes (cuda_graphs.py); on CUDA with batched attention only."""
        self.model = model
        self.beam_size = beam_size
        self.dtype = dtype
        self.device = model.decoder.token_embedding.weight.device
        self.prepare, self.finish, self.progress = prepare, finish, progress
        graphed = cuda_graphs and self.device.type == "cuda" and batched_attention
        self.caches = kv_cache.Caches(model, slots, max(beam_size or 1, BEST_OF), dtype, batched_attention,
                                      scratch=graphed)
        self.graphs = GraphedPasses(self.caches) if graphed else None
        self.rules = Rules(self._tokenizer("en", "transcribe"), model.dims.n_audio_ctx)
        self.language_tokenizer = restricted_language_tokenizer(model)
        self.words = WordTiming(model, dtype)

    def _tokenizer(self, language: str, task: str) -> Tokenizer:
        return get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                             language=language, task=task)

    def serve(self, source: Source, capacity: int, observe_pass: Callable[[int], None]) -> None:
        """Run requests from ``source`` until it is stopped and drained."""
        running: list[_Running] = []
        capacity = min(capacity, self.caches.slots)  # a request takes a place only with a slot free
        with torch.inference_mode():
            while True:
                while len(running) < capacity:
                    if not running:
                        self.caches.forget()  # idle: on the CPU, the pages it wrote go back
                    work = source.next(block=not running)
                    if work is None:
                        if not running:
                            return  # stopped and drained
                        break
                    self._admit(work, running)
                if not running:
                    continue
                for gone in [r for r in running if r.work.abandoned]:
                    log.info("a request left the decoding loop: its client has gone (%d windows done)",
                             gone.windows_done)
                    self._end(gone, running, None, None)
                self._open_windows([r for r in running if r.search is None], running)
                live = [r for r in running if r.search is not None and not r.search.done]
                if live:
                    self._pass(live, running)
                    observe_pass(len(live))
                for r in [r for r in running if r.search is not None and r.search.done]:
                    self._settle_search(r, running)

    # -- requests -------------------------------------------------------------------------------------

    def _admit(self, work: Job, running: list[_Running]) -> None:
        try:
            prepared = self.prepare(work)
        except Exception as exc:  # this request's audio or options: it alone fails
            raise_if_device_fault(exc)
            work.settle(None, exc)
            return
        if not isinstance(prepared, RequestWindows):
            work.settle(prepared, None)  # answered without the model (no speech)
            return
        running.append(_Running(work, prepared))

    def _end(self, r: _Running, running: list[_Running], result: Transcription | None,
             error: BaseException | None) -> None:
        if r.slot is not None:
            self.caches.close(r.slot)
            r.slot = None
        running.remove(r)
        if error is not None or result is not None:
            r.work.settle(result, error)

    def _fail(self, r: _Running, running: list[_Running], error: BaseException) -> None:
        raise_if_device_fault(error)
        if is_out_of_memory(error) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the cached blocks back to whoever runs next
        self._end(r, running, None, error)

    # -- windows --------------------------------------------------------------------------------------

    def _open_windows(self, starting: list[_Running], running: list[_Running]) -> None:
        ready = []
        for r in starting:
            try:
                mel = r.windows.next_window()
                if mel is not None:
                    ready.append((r, mel.to(self.device, self.dtype)))
            except Exception as exc:  # this request's audio: it alone fails
                self._fail(r, running, exc)
                continue
            if mel is None:
                self._answer(r, running)
        if not ready:
            return
        if self.device.type == "cpu":  # compute-bound at one window: stacking only adds memory
            for r, mel in ready:
                self._encode_and_start([(r, mel)], running)
            return
        by_length: dict[int, list[tuple[_Running, torch.Tensor]]] = {}
        for r, mel in ready:  # 30 s windows stacked; a fitted window (live) with those of its length
            by_length.setdefault(int(mel.shape[-1]), []).append((r, mel))
        for group in by_length.values():
            self._encode_and_start(group, running)

    def _encode_and_start(self, group: list[tuple[_Running, torch.Tensor]], running: list[_Running]) -> None:
        try:
            features = forward.encode(self.model, torch.stack([mel for _, mel in group]))
        except Exception as exc:
            if len(group) > 1 and is_out_of_memory(exc):
                torch.cuda.empty_cache()
                half = len(group) // 2
                self._encode_and_start(group[:half], running)
                self._encode_and_start(group[half:], running)
                return
            for r, _ in group:
                self._fail(r, running, exc)
            return
        for (r, _), window_features in zip(group, features, strict=True):
            try:
                r.slot = self.caches.open(window_features.unsqueeze(0))
                if r.windows.tokenizer is None:
                    language = r.windows.language or self._detect(window_features)
                    r.windows.set_tokenizer(self._tokenizer(language, r.windows.options.task))
                self._start_search(r)
            except Exception as exc:
                self._fail(r, running, exc)

    def _detect(self, features: torch.Tensor) -> str:
        """The language of the first window, among the supported ones only."""
        return detect_language(self.model, features, self.language_tokenizer)

    def _start_search(self, r: _Running) -> None:
        """Run the prompt of the window's search at its temperature, and take its first token."""
        assert r.slot is not None
        search = r.windows.search(self.device)
        logits = forward.prefill(self.caches, r.slot, search.initial_tokens, search.rows,
                                 (search.sot_index, search.first_choice_at))
        no_speech = None if self.rules.no_speech is None else logits[0].softmax(dim=-1)[self.rules.no_speech]
        plan = make_plan(self.caches, self.rules, [Entry(r.slot, search)])
        advance(self.rules, plan, logits[1:].expand(search.rows, -1).clone(), no_speech)
        r.search, r.moves = search, None  # its rows share the prompt: nothing to move

    # -- the shared pass ------------------------------------------------------------------------------

    def _pass(self, live: list[_Running], running: list[_Running]) -> None:
        live = sorted(live, key=lambda r: r.search.kind if r.search is not None else 0)
        entries = [Entry(r.slot, r.search, r.moves) for r in live
                   if r.slot is not None and r.search is not None]
        bucket = self.graphs.bucket(sum(e.search.rows for e in entries)) if self.graphs else None
        try:
            plan = make_plan(self.caches, self.rules, entries, pad_to=bucket)
            forward.rearrange(self.caches, plan)
        except Exception as exc:  # the moves may be half made: these searches cannot go on
            for r in live:
                self._fail(r, running, exc)
            return
        for r in live:
            r.moves = None
        try:
            logits = forward.step(self.caches, plan) if self.graphs is None or bucket is None \
                else self.graphs.run(plan)
        except Exception as exc:
            if len(live) > 1 and is_out_of_memory(exc):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                half = len(live) // 2
                log.warning("out of memory in a decoder pass of %d requests: run in halves", len(live))
                self._pass(live[:half], running)
                self._pass(live[half:], running)
                return
            for r in live:
                self._fail(r, running, exc)
            return
        try:
            for r, moves in zip(live, advance(self.rules, plan, logits), strict=True):
                r.moves = moves
        except Exception as exc:  # the pass ran: these searches cannot run it again
            for r in live:
                self._fail(r, running, exc)

    def _settle_search(self, r: _Running, running: list[_Running]) -> None:
        assert r.search is not None and r.windows.tokenizer is not None
        try:
            result = r.search.result(r.windows.tokenizer)
            if r.windows.judge(result):
                self._start_search(r)  # the same audio features, the next temperature
                return
            r.windows.accept(result, self.words.add)
            self.progress(r.work, r.windows)
        except Exception as exc:
            self._fail(r, running, exc)
            return
        r.search, r.moves = None, None
        r.windows_done += 1
        if r.slot is not None:
            self.caches.close(r.slot)
            r.slot = None
        if r.windows.finished:
            self._answer(r, running)

    def _answer(self, r: _Running, running: list[_Running]) -> None:
        try:
            result = self.finish(r.work, r.windows)
        except Exception as exc:
            self._fail(r, running, exc)
            return
        self._end(r, running, result, None)

    def warm_up_words(self) -> None:
        """whisper's word alignment once, on a made-up segment over silence: its DTW compiles now."""
        self.words.warm_up(self._tokenizer("en", "transcribe"))
