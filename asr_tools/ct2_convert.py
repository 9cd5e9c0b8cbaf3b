"""CTranslate2 Whisper ``model.bin`` -> openai-whisper checkpoint, exactly.

Reads CTranslate2's binary format (every variable, aliases resolved), then
maps it onto openai-whisper's state dict: float16 values copied bit for bit,
dims derived from the shapes, fused query/key/value and cross-attention
key/value split (the all-zero key bias checked and dropped), architecture
scalars checked, and a loud failure on any variable left unmapped.
"""

from __future__ import annotations

import base64
import gzip
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# CTranslate2 variable dtypes, by the id its binary format stores.
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # bfloat16 unsupported

# Scalars CTranslate2 keeps in the model that openai-whisper's architecture
# hard-codes: each must hold exactly this value, or the conversion would be wrong.
_EXPECTED_SCALARS = {
    "decoder/activation": 3,  # GELU
    "decoder/alibi": 0,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    # Placeholders; the real alignment heads are in config.json.
    "decoder/alignment_heads": 1,
    "decoder/alignment_layer": -1,
}


class ConversionError(RuntimeError):
    """The CTranslate2 model does not map exactly onto openai-whisper."""


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 ``model.bin``; aliases resolve to their target."""
    with path.open("rb") as f:
        version = _read(f, "I")
        if version < 5:
            raise ConversionError(f"CTranslate2 binary version {version} is not supported")
        spec = _read_string(f)
        if spec != "WhisperSpec":
            raise ConversionError(f"not a Whisper model: spec {spec!r}")
        _read(f, "I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(_read(f, "I")):
            name = _read_string(f)
            shape = tuple(_read(f, "I") for _ in range(_read(f, "B")))
            dtype_id = _read(f, "B")
            num_bytes = _read(f, "I")
            dtype = _CT2_DTYPES[dtype_id] if dtype_id < len(_CT2_DTYPES) else None
            if dtype is None:
                raise ConversionError(f"{name}: unsupported dtype id {dtype_id}")
            data = f.read(num_bytes)
            if len(data) != num_bytes:
                raise ConversionError(f"{name}: file truncated")
            variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        for _ in range(_read(f, "I")):
            alias, target = _read_string(f), _read_string(f)
            variables[alias] = variables[target]
        if f.read(1):
            raise ConversionError("trailing bytes after the last variable")
    return variables


def _read(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise ConversionError("file truncated")
    value: int = struct.unpack(fmt, raw)[0]
    return value


def _read_string(f: BinaryIO) -> str:
    raw = f.read(_read(f, "H"))
    return raw[:-1].decode("utf-8")


@dataclass(frozen=True)
class Checkpoint:
    """An openai-whisper checkpoint, as ``whisper.load_model`` expects it plus alignment heads."""

    dims: dict[str, int]
    model_state_dict: dict[str, torch.Tensor]
    alignment_heads: bytes  # whisper's own format: base85 of gzip of a bool mask

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(asdict(self), tmp)
        tmp.replace(path)


class _Mapper:
    """Moves CTranslate2 variables into a state dict, tracking what is left."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.left = dict(variables)
        self.state: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise ConversionError(f"missing CTranslate2 variable {name}")
        return self.left.pop(name)

    def put(self, key: str, value: np.ndarray) -> None:
        self.state[key] = torch.from_numpy(np.ascontiguousarray(value))

    def copy(self, key: str, name: str) -> None:
        self.put(key, self.take(name))

    def linear(self, key: str, name: str) -> None:
        self.copy(f"{key}.weight", f"{name}/weight")
        self.copy(f"{key}.bias", f"{name}/bias")

    def layer_norm(self, key: str, name: str) -> None:
        self.copy(f"{key}.weight", f"{name}/gamma")
        self.copy(f"{key}.bias", f"{name}/beta")

    def split(self, name: str, keys: tuple[str, ...], state: int) -> None:
        """Split a fused projection; whisper's key projection has no bias, so its slice must be zero."""
        weight, bias = self.take(f"{name}/weight"), self.take(f"{name}/bias")
        if weight.shape != (state * len(keys), state):
            raise ConversionError(f"{name}: unexpected fused shape {weight.shape}")
        for i, key in enumerate(keys):
            part = slice(i * state, (i + 1) * state)
            self.put(f"{key}.weight", weight[part])
            if key.endswith(".key"):
                if np.any(bias[part] != 0):
                    raise ConversionError(f"{name}: key bias is not zero")
            else:
                self.put(f"{key}.bias", bias[part])


def convert(variables: dict[str, np.ndarray], config: dict[str, object]) -> Checkpoint:
    """Map a CTranslate2 Whisper model onto openai-whisper's state dict, exactly."""
    m = _Mapper(variables)
    for name, expected in _EXPECTED_SCALARS.items():
        value = int(m.take(name))
        if value != expected:
            raise ConversionError(f"{name} = {value}, openai-whisper needs {expected}")
    n_audio_head = int(m.take("encoder/num_heads"))
    n_text_head = int(m.take("decoder/num_heads"))
    n_audio_layer = _count_layers(variables, "encoder")
    n_text_layer = _count_layers(variables, "decoder")
    conv1 = variables["encoder/conv1/weight"]
    n_audio_ctx, n_audio_state = variables["encoder/position_encodings/encodings"].shape
    n_text_ctx, n_text_state = variables["decoder/position_encodings/encodings"].shape
    n_vocab = variables["decoder/embeddings/weight"].shape[0]

    m.copy("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        m.copy(f"encoder.{conv}.weight", f"encoder/{conv}/weight")
        m.copy(f"encoder.{conv}.bias", f"encoder/{conv}/bias")
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _self_attention(m, src, dst, n_audio_state)
        _mlp(m, src, dst)
    m.layer_norm("encoder.ln_post", "encoder/layer_norm")

    m.copy("decoder.positional_embedding", "decoder/position_encodings/encodings")
    m.copy("decoder.token_embedding.weight", "decoder/embeddings/weight")
    # whisper ties its output projection to the token embedding; CTranslate2 stores an alias.
    if not np.array_equal(m.take("decoder/projection/weight"), variables["decoder/embeddings/weight"]):
        raise ConversionError("output projection is not tied to the token embedding")
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _self_attention(m, src, dst, n_text_state)
        m.layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        m.linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        m.split(f"{src}/attention/linear_1",
                (f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"), n_text_state)
        m.linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        _mlp(m, src, dst)
    m.layer_norm("decoder.ln", "decoder/layer_norm")

    if m.left:
        raise ConversionError(f"unmapped CTranslate2 variables: {sorted(m.left)}")
    dims = {
        "n_mels": int(conv1.shape[1]), "n_audio_ctx": int(n_audio_ctx),
        "n_audio_state": int(n_audio_state), "n_audio_head": n_audio_head,
        "n_audio_layer": n_audio_layer, "n_vocab": int(n_vocab),
        "n_text_ctx": int(n_text_ctx), "n_text_state": int(n_text_state),
        "n_text_head": n_text_head, "n_text_layer": n_text_layer,
    }
    heads = np.zeros((n_text_layer, n_text_head), dtype=bool)
    for layer, head in config["alignment_heads"]:  # type: ignore[attr-defined]
        heads[layer, head] = True
    dump = base64.b85encode(gzip.compress(heads.tobytes(), mtime=0))  # reproducible bytes
    return Checkpoint(dims=dims, model_state_dict=m.state, alignment_heads=dump)


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    layer = re.compile(rf"^{side}/layer_(\d+)/")
    return len({match[1] for name in variables if (match := layer.match(name))})


def _self_attention(m: _Mapper, src: str, dst: str, state: int) -> None:
    m.layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
    m.split(f"{src}/self_attention/linear_0",
            (f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"), state)
    m.linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")


def _mlp(m: _Mapper, src: str, dst: str) -> None:
    m.layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    m.linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
    m.linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
