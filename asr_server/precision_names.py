"""``ASR_PRECISION``'s values, and the two older settings it replaced, still read.

``ASR_DTYPE`` (``auto``, ``float32``, ``bfloat16``, ``float16``) and ``ASR_QUANTIZE`` (``none``,
``int8``) are read as the precision they stood for, with a line at start that names
``ASR_PRECISION``; set beside it, or against each other, they are refused. What each precision
holds: engine/model_loading.py.
"""

from __future__ import annotations

from collections.abc import Mapping

PRECISION_SETTINGS = ("auto", "exact", "int8", "bfloat16", "float16")
PRECISION_RULE = "must be " + ", ".join(PRECISION_SETTINGS[:-1]) + " or " + PRECISION_SETTINGS[-1]
_OLD_NAMES = ("ASR_DTYPE", "ASR_QUANTIZE")
_OLD_DTYPES = {"auto": "auto", "float32": "exact", "bfloat16": "bfloat16", "float16": "float16"}
_OLD_QUANTIZE = {"none": None, "int8": "int8"}


def with_replaced_names(env: Mapping[str, str], precision: str, problems: list[str]) -> str:
    """``precision`` (ASR_PRECISION as read), or what the older names stand for where only they are
    set; a line in ``problems`` for each conflict."""
    old = {name: env[name].strip().lower() for name in _OLD_NAMES if env.get(name, "").strip()}
    if not old:
        return precision
    if env.get("ASR_PRECISION", "").strip():
        problems.append(f"{' and '.join(old)} are replaced by ASR_PRECISION, which is set too: "
                        f"remove {' and '.join(old)}")
        return precision
    dtype = _OLD_DTYPES.get(old.get("ASR_DTYPE", "auto"))
    quantized = old.get("ASR_QUANTIZE", "none")
    if dtype is None or quantized not in _OLD_QUANTIZE:
        problems.append(f"{' and '.join(f'{k}={v!r}' for k, v in old.items())}: replaced by "
                        f"ASR_PRECISION, which {PRECISION_RULE}")
        return precision
    if _OLD_QUANTIZE[quantized] is None:
        return dtype
    if dtype not in ("auto", "exact"):
        problems.append(f"ASR_QUANTIZE=int8 cannot go with ASR_DTYPE={old['ASR_DTYPE']}: "
                        "set ASR_PRECISION=int8 instead of both")
    return "int8"


def replaced_settings(env: Mapping[str, str], precision: str) -> list[str]:
    """A line for each older setting still in use, naming what replaces it (logged at start)."""
    return [f"{name}={env[name].strip()} is read as ASR_PRECISION={precision}: "
            f"{name} is replaced by ASR_PRECISION (README), set that instead"
            for name in _OLD_NAMES if env.get(name, "").strip()]
