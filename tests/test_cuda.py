"""The decoding loop on CUDA: float16, batched attention, a real out-of-memory error in a pass.

Run by scripts/gpu_check.sh on a CUDA machine (``requires_cuda``; deselected by make test).
"""

from __future__ import annotations

import pytest
import torch

from asr_server.config import Config
from asr_server.contract.domain import TranscribeOptions, Transcription
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.model_loading import claim_device
from asr_server.engine.transcriber import Engine, EngineSettings
from tests.harness import load_manifest, normalise

pytestmark = pytest.mark.requires_cuda


def cuda_engine(beam_size: int, batched_attention: bool | None = None) -> Engine:
    return Engine(EngineSettings(Config().model_path, "cuda", threads=4, beam_size=beam_size, vad=False,
                                 batched_attention=batched_attention))


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
    assert engine.loop.caches.self_k == []  # idle: the caches' memory went back


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
    assert engine.transcribe_batch(work[:2], capacity=1) == alone  # and it goes on serving


def test_a_numbered_device_is_made_current() -> None:
    """ASR_DEVICE=cuda:N: what allocates without naming a device (Triton, CUDA's handles) lands on N."""
    last = torch.cuda.device_count() - 1
    claim_device(torch.device(f"cuda:{last}"))
    assert torch.cuda.current_device() == last
    claim_device(torch.device("cuda:0"))
    assert torch.cuda.current_device() == 0
