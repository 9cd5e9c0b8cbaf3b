"""The decoding loop on CUDA: float16, batched attention, a real out-of-memory error in a pass.

Run by scripts/gpu_check.sh on a CUDA machine (``requires_cuda``; deselected by make test).
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from asr_server.config import Config
from asr_server.contract.domain import TranscribeOptions, Transcription
from asr_server.engine import forward
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.model_loading import claim_device
from asr_server.engine.pass_plan import make_plan, read_back
from asr_server.engine.token_choice import choose
from asr_server.engine.transcriber import Engine, EngineSettings
from tests.harness import Clip, ServerProcess, load_manifest, normalise, word_levenshtein
from tests.test_pass_reads import decoding_mid_way, moving, one_pass

from .conftest import Exchange, exchange

pytestmark = pytest.mark.requires_cuda


def cuda_engine(beam_size: int, batched_attention: bool | None = None, cuda_graphs: bool = True) -> Engine:
    return Engine(EngineSettings(Config().model_path, "cuda", threads=4, beam_size=beam_size, vad=False,
                                 batched_attention=batched_attention, cuda_graphs=cuda_graphs))


def items(count: int, step: int = 3) -> list[tuple[object, TranscribeOptions]]:
    clips = [c for c in load_manifest() if c.kind == "short"][::step][:count]
    return [(decode_wav(c.path.read_bytes(), 60).samples, TranscribeOptions(c.lang, "transcribe"))
            for c in clips]


def test_the_loop_runs_float16_with_batched_attention_by_default() -> None:
    engine = cuda_engine(beam_size=1)
    assert engine.dtype == torch.float16 and engine.loop.caches.batched
    # held in float16 once (engine/model_loading.py), LayerNorm and the positional embeddings in float32
    held = {p.dtype for name, p in engine.model.named_parameters()
            if "ln" not in name and "positional" not in name}
    assert held == {torch.float16}
    assert next(engine.model.parameters()).device.type == "cuda"
    clip = next(c for c in load_manifest() if "jfk" in c.path.name)
    samples = decode_wav(clip.path.read_bytes(), 60).samples
    result = engine.transcribe(samples, TranscribeOptions("en", "transcribe", word_timestamps=True))
    assert "country" in result.text
    words = [w for s in result.segments for w in s.words or ()]
    assert words and words[-1].end > 9.0  # whisper's alignment on the float16 weights
    caches = engine.loop.caches
    assert len(caches.free) == caches.slots  # idle: every slot free, the reservation kept
    assert sum(t.numel() * t.element_size() for t in (*caches.self_k, *caches.self_v, *caches.cross_k,
                                                        *caches.cross_v)) == caches.reserved_bytes


@pytest.mark.parametrize("beam_size", [1, 5])
def test_batched_attention_equals_per_window_attention(beam_size: int) -> None:
    """Both forms on float16; batched and alone. float16 may flip a near tie: compared by words."""
    work = items(8)
    batched = cuda_engine(beam_size, batched_attention=True).transcribe_batch(work)  # type: ignore[arg-type]
    per_window = cuda_engine(beam_size, batched_attention=False).transcribe_batch(work)  # type: ignore[arg-type]
    same = 0
    for a, b in zip(batched, per_window, strict=True):
        assert isinstance(a, Transcription) and isinstance(b, Transcription) and a.text
        same += normalise(a.text, "en") == normalise(b.text, "en")
    assert same >= 7, (batched, per_window)


def test_fitted_windows_beside_whole_ones_are_encoded_by_length_and_masked_in_graphed_passes() -> None:
    """Live decodes' fitted windows (fit_window) in one batch with 30 s ones: stacked by length for
    the encoder, replayed graphs against eager per-window attention, float16, compared by words."""
    work = [(samples, TranscribeOptions(options.language, "transcribe", fit_window=index % 2 == 0))
            for index, (samples, options) in enumerate(items(8))]
    graphed = cuda_engine(1)
    graphed.warm_up()
    replayed = graphed.transcribe_batch(work)  # type: ignore[arg-type]
    assert graphed.loop.graphs is not None and graphed.loop.graphs.enabled
    per_window = cuda_engine(1, batched_attention=False).transcribe_batch(work)  # type: ignore[arg-type]
    same = 0
    for a, b in zip(replayed, per_window, strict=True):
        assert isinstance(a, Transcription) and isinstance(b, Transcription) and a.text
        same += normalise(a.text, "en") == normalise(b.text, "en")
    assert same >= 7, (replayed, per_window)


def test_a_real_out_of_memory_in_a_pass_is_run_in_halves() -> None:
    """Most of the card is taken first, so that a pass over 16 beam searches really runs out."""
    engine = cuda_engine(beam_size=5)
    work = items(16, step=1)
    alone = engine.transcribe_batch(work[:2], capacity=1)  # type: ignore[arg-type]
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(int(free - 600 * 2**20), dtype=torch.uint8, device="cuda")
    try:
        results = engine.transcribe_batch(work)  # type: ignore[arg-type]
    finally:
        del hog
        torch.cuda.empty_cache()
    for result in results:  # each request answered, or failed alone with the out-of-memory error
        assert isinstance(result, Transcription) or "out of memory" in str(result).lower(), result
    assert sum(isinstance(r, Transcription) for r in results) >= 2
    assert engine.transcribe_batch(work[:2], capacity=1) == alone  # type: ignore[arg-type]  # and it goes on serving


def test_a_numbered_device_is_made_current() -> None:
    """ASR_DEVICE=cuda:N: what allocates without naming a device (Triton, CUDA's handles) lands on N."""
    last = torch.cuda.device_count() - 1
    claim_device(torch.device(f"cuda:{last}"))
    assert torch.cuda.current_device() == last
    claim_device(torch.device("cuda:0"))
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-window"])
def test_a_pass_waits_on_the_device_only_for_its_one_read(batched: bool) -> None:
    """The pass up to its one read runs under torch.cuda.set_sync_debug_mode("error"): any op that
    makes the host wait for the GPU raises. Beam, greedy and sampled searches, beams moving."""
    engine = cuda_engine(beam_size=5)
    with torch.inference_mode():
        caches, rules, entries = decoding_mid_way(engine.model, batched, engine.dtype)
        for _ in range(30):
            entries, _ = one_pass(caches, rules, entries)
            if moving(entries):
                break
        assert moving(entries)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            plan = make_plan(caches, rules, entries)
            forward.rearrange(caches, plan)
            picks = choose(rules, forward.step(caches, plan), plan.rules)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert plan.moved > 0
        values = read_back(picks)
    rows = sum(plan.counts)
    assert all(0 <= token < engine.model.dims.n_vocab for token in values[:rows])


@pytest.mark.parametrize("beam_size", [1, 5])
def test_graphs_are_captured_at_warm_up_and_choose_what_eager_passes_choose(beam_size: int) -> None:
    """On by default; every bucket captured before the first request; float16, compared by words."""
    graphed = cuda_engine(beam_size)
    graphed.warm_up()
    graphs = graphed.loop.graphs
    assert graphs is not None and graphs.enabled and set(graphs.graphs) == set(graphs.buckets)
    eager = cuda_engine(beam_size, cuda_graphs=False)
    assert eager.loop.graphs is None
    work = items(8)
    replayed = graphed.transcribe_batch(work)  # type: ignore[arg-type]
    assert graphs.enabled  # no capture failed on the way
    same = 0
    for a, b in zip(replayed, eager.transcribe_batch(work), strict=True):  # type: ignore[arg-type]
        assert isinstance(a, Transcription) and isinstance(b, Transcription) and a.text
        same += normalise(a.text, "en") == normalise(b.text, "en")
    assert same >= 7, (replayed, eager)


def test_a_real_out_of_memory_in_a_slot_opening_leaves_the_slot_free() -> None:
    """The card is filled (64 MiB blocks, then 1 MiB ones) until a window's opening, which needs its
    cross-attention keys (1.5 MiB for base), really runs out of memory."""
    engine = cuda_engine(beam_size=5)
    work = items(1)
    alone = engine.transcribe_batch(work)  # type: ignore[arg-type]
    caches = engine.loop.caches
    features = torch.zeros(1, engine.model.dims.n_audio_ctx, engine.model.dims.n_audio_state,
                           dtype=engine.dtype, device="cuda")
    hogs = []
    try:
        with torch.inference_mode():
            for block in (64 * 2**20, 2**20):
                while True:
                    try:
                        hogs.append(torch.empty(block, dtype=torch.uint8, device="cuda"))
                    except torch.OutOfMemoryError:
                        break
            free_before = sorted(caches.free)
            with pytest.raises(torch.OutOfMemoryError):
                caches.open(features)
            assert sorted(caches.free) == free_before  # the failed opening's slot is free again
    finally:
        del hogs
        torch.cuda.empty_cache()
    assert engine.transcribe_batch(work) == alone  # type: ignore[arg-type]  # and it goes on serving


REAL_DEVICE_FAULT_SERVER = '''
import sys
import torch
from asr_server import __main__ as entry
from asr_server.engine import forward
from asr_server.engine.transcriber import Engine

real_step, armed = forward.step, []
def step_then_index_out_of_bounds(caches, plan):
    """After warm-up, the second pass indexes past the end of a CUDA tensor: a real device-side assert."""
    logits = real_step(caches, plan)
    if armed:
        armed.append(1)
    if len(armed) == 3:
        logits[torch.full((1,), 10**9, device=logits.device)].sum().item()
    return logits
forward.step = step_then_index_out_of_bounds
warm_up = Engine.warm_up
def warm_up_then_arm(engine):
    warm_up(engine)
    armed.append(0)
Engine.warm_up = warm_up_then_arm
sys.exit(entry.main())
'''


def test_a_real_device_side_assert_is_internal_error_and_exit_70() -> None:
    env = {"ASR_DEVICE": "cuda", "ASR_BEAM_SIZE": "1", "SERVER_API_KEY": "", "ASR_VAD": "0",
           "ASR_CUDA_GRAPHS": "0", "SHUTDOWN_GRACE_S": "5"}
    clip = next(c for c in load_manifest() if "jfk" in c.path.name)
    server = ServerProcess(env=env, command=[sys.executable, "-c", REAL_DEVICE_FAULT_SERVER])
    with server:
        reply = exchange(server.url, {"type": "transcribe", "language": "en"}, clip.path.read_bytes())
        assert reply.reply["error"] == "internal_error" and reply.close_code == 1011
        assert server.proc is not None and server.proc.wait(60) == 70
        server.wait_for_line("DeviceFailed")


def test_the_server_on_cuda_answers_64_requests_from_16_clients_words_on_a_quarter() -> None:
    clips = [c for c in load_manifest() if c.kind == "short"][:16]
    jobs = [(clips[i % len(clips)], i % 4 == 0) for i in range(64)]
    env = {"ASR_DEVICE": "cuda", "SERVER_API_KEY": "", "ASR_MAX_BATCH": "16"}
    with ServerProcess(env=env) as server, ThreadPoolExecutor(16) as pool:

        def send(job: tuple[Clip, bool]) -> Exchange:
            clip, words = job
            return exchange(server.url, {"type": "transcribe", "language": clip.lang,
                                         "word_timestamps": words}, clip.path.read_bytes())

        replies = list(pool.map(send, jobs))
        passes = server.metric("asr_batch_size_count")
        single = server.metric('asr_batch_size_bucket{le="1.0"}')
        assert server.health(server.metrics_port)[0] == 200
    assert passes > single  # requests shared passes
    for (clip, words), answer in zip(jobs, replies, strict=True):
        reply = answer.reply
        assert "error" not in reply and reply["text"].strip(), (clip.path.name, reply)
        reference = normalise(clip.text, clip.lang).split()
        found = normalise(reply["text"], clip.lang).split()
        assert word_levenshtein(found, reference) <= 0.5 * len(reference), (clip.path.name, reply["text"])
        assert all(("words" in segment) == words for segment in reply["segments"])
