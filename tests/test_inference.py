"""The grouped-cache decoder gives whisper's own tokens, greedy and beam, float32 and float16, batched."""

from __future__ import annotations

import pytest
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.decoding import decode as whisper_decode

from asr_server import inference
from asr_server.audio import decode_wav
from asr_server.config import Config
from asr_server.engine import load_model
from asr_server.inference import GroupedCacheInference, decode, top_k
from tests.harness import Clip, load_manifest


@pytest.fixture(scope="module")
def model() -> whisper.model.Whisper:
    return load_model(Config().model_path, torch.device("cpu"))


@pytest.fixture(scope="module")
def clips() -> list[tuple[Clip, torch.Tensor]]:
    chosen = [c for c in load_manifest() if c.kind == "short"][::9][:6]
    return [(c, mel_of(c)) for c in chosen]


def mel_of(clip: Clip) -> torch.Tensor:
    samples = torch.from_numpy(decode_wav(clip.path.read_bytes(), 1e9).samples)
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(samples))


def single(result: DecodingResult | list[DecodingResult]) -> DecodingResult:
    assert isinstance(result, DecodingResult)
    return result


@pytest.mark.parametrize("beam_size", [None, 5])
def test_same_tokens_as_whisper(model: whisper.model.Whisper, clips: list[tuple[Clip, torch.Tensor]],
                                beam_size: int | None) -> None:
    assert len({c.lang for c, _ in clips}) >= 3
    for clip, mel in clips:
        options = DecodingOptions(language=clip.lang, beam_size=beam_size, fp16=False)
        with torch.inference_mode():
            ours, theirs = single(decode(model, mel, options)), single(whisper_decode(model, mel, options))
        assert ours.tokens == theirs.tokens, clip.path.name
        assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)
        assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-4)


def test_float16_and_a_prompt_past_the_first_cache_capacity(model: whisper.model.Whisper) -> None:
    """The dtype a CUDA run uses, checked on the CPU; a 60-token prompt makes the caches grow."""
    clip = next(c for c in load_manifest() if c.path.name == "en_whisper_jfk.wav")
    mel = mel_of(clip)
    prompt = "Ladies and gentlemen, the President of the United States, speaking at the inauguration. " * 3
    for fp16 in (True, False):
        options = DecodingOptions(language="en", fp16=fp16, prompt=prompt, beam_size=2)
        with torch.inference_mode():
            ours, theirs = single(decode(model, mel, options)), single(whisper_decode(model, mel, options))
        assert ours.audio_features.dtype == (torch.float16 if fp16 else torch.float32)
        assert ours.tokens == theirs.tokens
        assert "your country" in ours.text


def test_batched_beam_search(model: whisper.model.Whisper, clips: list[tuple[Clip, torch.Tensor]]) -> None:
    """whisper 20250625's own batched beam search fails; ours gives each clip its unbatched result."""
    mels = torch.stack([mel for _, mel in clips])
    options = DecodingOptions(beam_size=5, fp16=False)  # languages detected per clip, too
    with torch.inference_mode():
        with pytest.raises(RuntimeError):
            whisper_decode(model, mels, options)
        batched = decode(model, mels, options)
        assert isinstance(batched, list)
        for (clip, mel), result in zip(clips, batched, strict=True):
            alone = single(decode(model, mel, options))
            assert result.language == clip.lang == alone.language
            assert result.tokens == alone.tokens, clip.path.name
            assert result.audio_features.shape == alone.audio_features.shape


def test_a_beam_cannot_cross_into_another_audio(model: whisper.model.Whisper) -> None:
    inference = GroupedCacheInference(model, group=2)
    features = torch.zeros(2, model.dims.n_audio_ctx, model.dims.n_audio_state)
    with torch.inference_mode():
        inference.logits(torch.tensor([[50258, 50259]] * 4), features)
        inference.rearrange_kv_cache([1, 0, 3, 3])  # within each audio's pair: fine
        with pytest.raises(ValueError, match="another audio"):
            inference.rearrange_kv_cache([0, 2, 2, 3])


@pytest.mark.parametrize("beam_size", [None, 5])
def test_a_finished_audio_leaves_the_batch(model: whisper.model.Whisper,
                                           clips: list[tuple[Clip, torch.Tensor]], beam_size: int | None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rows_per_step: list[int] = []

    class RowCounting(inference.GroupedCacheInference):
        def _forward(self, new: torch.Tensor, group: int) -> torch.Tensor:
            rows_per_step.append(new.shape[0])
            return super()._forward(new, group)

    monkeypatch.setattr(inference, "GroupedCacheInference", RowCounting)
    options = DecodingOptions(beam_size=beam_size, fp16=False, language="en")
    mels = torch.stack([mel for _, mel in clips[:4]])
    with torch.inference_mode():
        batched = decode(model, mels, options)
        assert isinstance(batched, list)
        steps = list(rows_per_step)
        alone = [single(decode(model, mel, options)) for mel in mels]
    lengths = [len(r.tokens) for r in alone]
    assert len(set(lengths)) > 1, lengths  # clips of different lengths
    group = beam_size or 1
    assert steps[0] == 4  # the prompt, once per audio
    assert steps[1] == 4 * group  # then every sequence of every audio
    assert steps[-1] < 4 * group  # by the end, the audios that finished had left
    assert sorted(steps[1:], reverse=True) == steps[1:]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]


def test_top_k_finds_what_topk_finds() -> None:
    generator = torch.Generator().manual_seed(7)
    for width in (51865, 51866, 1000, 7):
        x = torch.log_softmax(torch.randn(5, width, generator=generator) * 4, dim=-1)
        x[:, ::3] = -float("inf")  # suppressed tokens, as the logit filters leave them
        x[4, 6:] = -float("inf")  # a row with fewer than six finite: padding must not be picked
        expected, found = x.topk(6), top_k(x, 6)
        assert torch.equal(found[0], expected.values) and torch.equal(found[1], expected.indices)
