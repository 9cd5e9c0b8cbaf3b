"""The CPU's fast Linear layers (asr_server/engine/cpu_linear.py) on the real model and real speech.

int8, CTranslate2's scheme and not torch.ao's dynamic int8: a scale per weight row and one per
token row, so no row's numbers depend on the rows it shares a pass with; every Linear layer of
both halves and the vocabulary projection in int8; whisper's own decoder (word alignment) still
sees the float32 embedding.

bf16 packed for oneDNN: the very bits of the unpacked bf16 model, layer by layer and end to end.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import whisper

from asr_server.contract.domain import TranscribeOptions
from asr_server.engine import cpu_linear, forward
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.transcriber import Engine
from tests.harness import load_manifest, normalise

from .conftest import Engines

JFK = next(c for c in load_manifest() if "jfk" in c.path.name)


@pytest.fixture(scope="module")
def engine(engines: Engines) -> Engine:
    return engines.get(precision="int8")


@pytest.fixture(scope="module")
def layer(engines: Engines) -> tuple[torch.nn.Linear, cpu_linear.Int8Linear]:
    linear = engines.model().decoder.blocks[1].mlp[0]  # 2048 x 512, with a bias
    return linear, cpu_linear.Int8Linear(linear)


def rows(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 512, generator=torch.Generator().manual_seed(seed))


def test_weights_are_int8_with_a_scale_per_row_and_use_all_8_bits(
        layer: tuple[torch.nn.Linear, cpu_linear.Int8Linear]) -> None:
    linear, quantized = layer
    assert quantized.quantized.dtype == torch.int8 and quantized.quantized.shape == linear.weight.shape
    assert quantized.scales.shape == (linear.out_features,)
    assert torch.equal(quantized.quantized.abs().amax(dim=1), torch.full((linear.out_features,), 127,
                                                                          dtype=torch.int8))
    dequantized = quantized.quantized.float() * quantized.scales.unsqueeze(1)
    assert (dequantized - linear.weight).abs().max() <= quantized.scales.max() / 2 + 1e-7


def test_the_product_is_close_to_float32(layer: tuple[torch.nn.Linear, cpu_linear.Int8Linear]) -> None:
    linear, quantized = layer
    x = rows(40).view(8, 5, 512)  # (requests, beams, state): any leading shape
    with torch.inference_mode():
        exact, found = linear(x), quantized(x)
    assert found.shape == exact.shape == (8, 5, 2048) and found.dtype == torch.float32
    assert float((found - exact).abs().max() / exact.abs().max()) < 0.03


def test_each_token_row_has_its_own_scale(layer: tuple[torch.nn.Linear, cpu_linear.Int8Linear]) -> None:
    """A quiet request batched with a loud one gets the very numbers it gets alone (a scale per tensor,
    torch.ao's, would round the quiet row to the loud row's grid)."""
    _, quantized = layer
    quiet, loud = rows(3, seed=1) * 0.01, rows(2, seed=2) * 1000
    with torch.inference_mode():
        alone = quantized(quiet)
        together = quantized(torch.cat([loud[:1], quiet, loud[1:]]))[1:4]
    assert torch.equal(alone, together)


def test_empty_and_silent_rows(layer: tuple[torch.nn.Linear, cpu_linear.Int8Linear]) -> None:
    linear, quantized = layer
    with torch.inference_mode():
        assert quantized(torch.zeros(0, 512)).shape == (0, 2048)
        silent = quantized(torch.zeros(2, 512))
    assert torch.equal(silent, linear.bias.detach().expand(2, -1))  # no NaN from a zero scale


def test_the_engine_swaps_every_linear_layer_and_the_vocabulary(engine: Engine, engines: Engines) -> None:
    model = engine.model
    assert engine.precision == "int8" and engine.dtype == torch.float32
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    swapped = [m for m in model.modules() if isinstance(m, cpu_linear.Int8Linear)]
    assert linears == [] and len(swapped) == 6 * 6 + 6 * 10  # base: encoder 6 per block, decoder 10
    embedding = model.decoder.token_embedding
    assert isinstance(embedding, cpu_linear.Vocabulary)
    assert isinstance(embedding.projection, cpu_linear.Int8Weight)
    # The float32 embedding is kept for the lookup and whisper's own decoder; the convolutions too.
    assert torch.equal(embedding.weight, engines.model().decoder.token_embedding.weight)
    assert model.encoder.conv1.weight.dtype == torch.float32
    hidden = rows(5)
    with torch.inference_mode():
        logits = forward.project(model.decoder, hidden)
        exact = forward.project(engines.model().decoder, hidden)
    assert torch.equal(logits, embedding.project(hidden)) and not torch.equal(logits, exact)
    assert float((logits - exact).abs().max() / exact.abs().max()) < 0.03


def test_int8_decodes_real_speech_with_words(engine: Engine) -> None:
    samples = decode_wav(JFK.path.read_bytes(), 60).samples
    result = engine.transcribe(samples, TranscribeOptions(None, "transcribe", word_timestamps=True))
    assert result.language == "en"  # detected in int8
    assert normalise(result.text, "en") == normalise(JFK.text, "en")
    words = [w for s in result.segments for w in s.words]
    assert [normalise(w.word, "en") for w in words[:3]] == ["and", "so", "my"]
    assert all(a.start <= b.start for a, b in itertools.pairwise(words)) and words[-1].end > 9.0


def test_a_request_reads_the_same_in_a_batch_as_alone(engine: Engine) -> None:
    clips = [c for c in load_manifest() if c.kind == "short" and c.lang in ("de", "fr")][:2]
    items = [(decode_wav(c.path.read_bytes(), 60).samples, TranscribeOptions(c.lang, "transcribe"))
             for c in clips]
    alone = [engine.transcribe(samples, options).text for samples, options in items]
    together = engine.transcribe_batch(items)
    assert [getattr(r, "text", r) for r in together] == alone


def test_int8_is_refused_on_a_model_off_the_cpu() -> None:
    model = whisper.model.Whisper(whisper.model.ModelDimensions(80, 1500, 64, 1, 1, 51865, 448, 64, 1, 1))
    model.to("meta")
    with pytest.raises(RuntimeError, match="int8 is for the CPU"):
        cpu_linear.quantize_int8(model)


@pytest.fixture(scope="module")
def bf16_engine(engines: Engines) -> Engine:
    return engines.get(precision="bfloat16")


def test_a_packed_bf16_layer_has_f_linears_bits(engines: Engines) -> None:
    model = engines.model("bfloat16")  # as loaded, unpacked
    layers = (model.decoder.blocks[0].mlp[0], model.encoder.blocks[3].attn.key)  # with and without a bias
    for linear in layers:
        packed = cpu_linear.PackedLinear(linear.weight, linear.bias)
        for shape in ((1, 512), (5, 1, 512), (40, 1, 512), (1500, 512)):
            x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(torch.bfloat16)
            with torch.inference_mode():
                assert torch.equal(packed(x), linear(x)), shape
    embedding = model.decoder.token_embedding
    vocabulary = cpu_linear.Vocabulary(embedding, cpu_linear.PackedLinear(embedding.weight, None))
    hidden = rows(5).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(vocabulary.project(hidden), forward.project(model.decoder, hidden))


def test_the_bf16_engine_is_packed_and_computes_the_unpacked_models_bits(
        bf16_engine: Engine, engines: Engines) -> None:
    packed, unpacked = bf16_engine.model, engines.model("bfloat16")
    assert bf16_engine.precision == "bfloat16"
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    assert sum(isinstance(m, cpu_linear.PackedLinear) for m in packed.modules()) == 6 * 6 + 6 * 10 + 1
    samples = decode_wav(JFK.path.read_bytes(), 60).samples
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples))).unsqueeze(0)
    tokens = torch.tensor([[50258, 50259, 50359, 50363, 400, 370, 452]])
    with torch.inference_mode():
        audio = packed.encoder(mel.to(torch.bfloat16))
        assert torch.equal(audio, unpacked.encoder(mel.to(torch.bfloat16)))
        # whisper's own decoder (word alignment runs it) through the packed layers
        assert torch.equal(packed.decoder(tokens, audio), unpacked.decoder(tokens, audio))


def test_bf16_packed_decodes_real_speech_with_words(bf16_engine: Engine) -> None:
    samples = decode_wav(JFK.path.read_bytes(), 60).samples
    result = bf16_engine.transcribe(samples, TranscribeOptions("en", "transcribe", word_timestamps=True))
    assert normalise(result.text, "en") == normalise(JFK.text, "en")
    assert [normalise(w.word, "en") for s in result.segments for w in s.words][:3] == ["and", "so", "my"]


def test_the_private_kernels_are_checked_against_torchs_version(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_linear.check_torch()  # the pinned torch
    monkeypatch.setattr(cpu_linear, "KNOWN_TORCH", ("1.13",))
    with pytest.raises(RuntimeError, match=r"cpu_linear.py is checked against torch 1.13, not 2\."):
        cpu_linear.check_torch()
