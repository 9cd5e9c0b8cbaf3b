"""ASR_PRECISION: what ``auto`` picks per device, the older names it replaced, weights converted once
at load, and bf16/fp16 decoding on the CPU (int8 and packed bf16: tests/test_cpu_linear.py).

The reduced-precision tests run the real model on real speech. On a CPU without native bf16
or fp16 torch emulates both, slowly but with the same rounding, so these check the dtype path
CUDA (float16) and AMX hosts (bfloat16) take.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from asr_server.config import Config, ConfigError
from asr_server.contract.domain import TranscribeOptions
from asr_server.engine import forward
from asr_server.engine import model_loading as loading
from asr_server.engine.audio_decoding import decode_wav
from asr_server.engine.model_loading import native_bf16_flags, resolve_precision
from asr_server.engine.transcriber import Engine, EngineSettings
from asr_server.precision_names import replaced_settings
from tests.harness import ServerProcess, load_manifest, normalise

from .conftest import KEY, Engines

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {n}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n\n"
                            for n in range(2)))
    return path


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    sapphire_rapids = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
    assert native_bf16_flags(cpuinfo(tmp_path, sapphire_rapids)) == ("amx_bf16", "avx512_bf16")
    assert native_bf16_flags(cpuinfo(tmp_path, "fpu sse2 avx avx2 fma f16c")) == ()
    assert native_bf16_flags(tmp_path / "missing") == ()  # not Linux: no claim of native bf16


def test_auto_picks_float16_on_cuda_and_on_a_cpu_what_the_wer_rule_allowed() -> None:
    assert resolve_precision("auto", CUDA) == "float16"
    assert resolve_precision("auto", CUDA, int8_keeps_wer=True) == "float16"  # int8 is the CPU's
    assert resolve_precision("auto", CPU, (), int8_keeps_wer=True) == "int8"
    native = ("amx_bf16",)
    assert resolve_precision("auto", CPU, native, int8_keeps_wer=True, bf16_keeps_wer=True) == "int8"
    assert resolve_precision("auto", CPU, (), int8_keeps_wer=False, bf16_keeps_wer=True) == "exact"
    assert resolve_precision("auto", CPU, native, int8_keeps_wer=False, bf16_keeps_wer=True) == "bfloat16"
    assert resolve_precision("auto", CPU, native, int8_keeps_wer=False, bf16_keeps_wer=False) == "exact"
    # The rule's verdicts as measured (docs/accuracy.md), on any CPU.
    expected = "int8" if loading.INT8_KEEPS_WER else "bfloat16" if loading.BF16_KEEPS_WER else "exact"
    assert resolve_precision("auto", CPU, ("amx_bf16",)) == expected
    for name in ("exact", "int8", "bfloat16", "float16"):
        assert resolve_precision(name, CPU, ("amx_bf16",)) == name
    with pytest.raises(RuntimeError, match="ASR_PRECISION=int8 is for the CPU"):
        resolve_precision("int8", CUDA)
    assert loading.DTYPES == {"exact": torch.float32, "int8": torch.float32, "bfloat16": torch.bfloat16,
                              "float16": torch.float16}


def test_the_weights_are_converted_once_but_layernorm_and_positions_stay_float32(engines: Engines) -> None:
    model = engines.model("bfloat16")
    kept = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    converted = {name for name, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert kept == {name for name, _ in model.named_parameters() if "ln" in name.split(".")[-2]} | {
        "decoder.positional_embedding"}
    assert "decoder.token_embedding.weight" in converted and "encoder.conv1.weight" in converted
    assert len(kept) + len(converted) == len(list(model.parameters()))
    assert model.encoder.positional_embedding.dtype == torch.float32


def precision_of(**env: str) -> str:
    return Config.from_env({**env, "ALLOW_NO_AUTH": "1"}).precision


def test_config_reads_asr_precision_and_the_names_it_replaced() -> None:
    assert precision_of() == "auto"
    assert precision_of(ASR_PRECISION="Int8") == "int8"
    with pytest.raises(ConfigError, match=r"ASR_PRECISION.*must be auto, exact, int8, bfloat16 or float16"):
        precision_of(ASR_PRECISION="fp8")
    # The older names still work, each read as the precision it stood for...
    assert precision_of(ASR_DTYPE="float32") == "exact"
    assert precision_of(ASR_DTYPE="BFloat16") == "bfloat16"
    assert precision_of(ASR_DTYPE="auto", ASR_QUANTIZE="none") == "auto"
    assert precision_of(ASR_QUANTIZE="int8") == "int8"
    assert precision_of(ASR_DTYPE="float32", ASR_QUANTIZE="int8") == "int8"
    # ...and a line at start names the new one.
    env = {"ASR_QUANTIZE": "int8", "ALLOW_NO_AUTH": "1"}
    assert replaced_settings(env, Config.from_env(env).precision) == [
        "ASR_QUANTIZE=int8 is read as ASR_PRECISION=int8: ASR_QUANTIZE is replaced by ASR_PRECISION "
        "(README), set that instead"]
    assert replaced_settings({"ASR_PRECISION": "exact"}, "exact") == []
    with pytest.raises(ConfigError, match="ASR_QUANTIZE=int8 cannot go with ASR_DTYPE=bfloat16: set "
                                          "ASR_PRECISION=int8"):
        precision_of(ASR_DTYPE="bfloat16", ASR_QUANTIZE="int8")
    with pytest.raises(ConfigError, match="ASR_DTYPE='fp8': replaced by ASR_PRECISION, which must be auto"):
        precision_of(ASR_DTYPE="fp8")
    with pytest.raises(ConfigError, match="ASR_DTYPE are replaced by ASR_PRECISION, which is set too: "
                                          "remove ASR_DTYPE"):
        precision_of(ASR_DTYPE="float32", ASR_PRECISION="int8")


def test_the_log_says_what_the_cpu_multiplies_natively_and_what_runs(
        engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    settings = EngineSettings(Config().model_path, "cpu", threads=torch.get_num_threads(), beam_size=1,
                              vad=False)
    native = native_bf16_flags()
    chosen = resolve_precision("auto", CPU, native)
    with caplog.at_level(logging.INFO, logger="asr_server.engine.transcriber"):
        engine = Engine(settings, copy.deepcopy(engines.model(chosen)))  # a copy: it may swap layers
    assert f"CPU bf16 support: {' '.join(native) or 'none'}" in caplog.text
    assert f"ASR_PRECISION=auto runs at {engine.precision}" in caplog.text
    assert engine.precision == chosen


def reduced_precision_engine(engines: Engines, precision: str) -> Engine:
    engine = engines.get(precision=precision)
    assert engine.precision == precision and engine.dtype == loading.DTYPES[precision]
    assert engine.loop.caches.dtype == engine.dtype  # the caches in the model's dtype
    return engine


JFK = next(c for c in load_manifest() if "jfk" in c.path.name)


def test_bfloat16_decodes_real_speech(engines: Engines) -> None:
    engine = reduced_precision_engine(engines, "bfloat16")
    samples = decode_wav(JFK.path.read_bytes(), 60).samples
    result = engine.transcribe(samples, TranscribeOptions(None, "transcribe"))
    assert result.language == "en"  # detected in bf16
    assert normalise(result.text, "en") == normalise(JFK.text, "en")
    assert result.segments[-1].end > 9.0


def test_float16_decodes_real_speech(engines: Engines) -> None:
    """CUDA's dtype, on the CPU (tests/test_cuda.py runs it with word timestamps on a GPU: whisper's
    alignment reruns the whole model, half a minute in emulated float16 here)."""
    engine = reduced_precision_engine(engines, "float16")
    samples = decode_wav(JFK.path.read_bytes(), 60).samples
    result = engine.transcribe(samples, TranscribeOptions("en", "transcribe"))
    assert normalise(result.text, "en") == normalise(JFK.text, "en")
    assert result.segments[-1].end > 9.0


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_decoders_layernorm_skips_whispers_casts_with_the_same_bits(engines: Engines, dtype: str) -> None:
    model = engines.model(dtype)
    norm = model.decoder.blocks[2].mlp_ln
    held = loading.DTYPES[dtype]
    x = (torch.randn(7, 1, model.dims.n_text_state, generator=torch.Generator().manual_seed(1)) * 4).to(held)
    assert torch.equal(forward._norm(norm, x), norm(x))
    assert forward._norm(norm, x).dtype == held


def test_a_server_started_with_an_older_name_runs_its_precision_and_says_so() -> None:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY, "ASR_DTYPE": "float32"}
    with ServerProcess(env=env) as server:
        status, metrics = server.http_get("/metrics", server.metrics_port)
        lines = list(server.lines)
    assert status == 200 and 'dtype="float32",name="base",precision="exact"' in metrics
    assert any("ASR_DTYPE=float32 is read as ASR_PRECISION=exact: ASR_DTYPE is replaced by ASR_PRECISION"
               in line for line in lines), lines[:5]
