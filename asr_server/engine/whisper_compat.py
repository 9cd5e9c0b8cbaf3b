"""The one place that relies on openai-whisper beyond what it publishes; checked against its version.

The rest of the server uses whisper's model modules, its tokenizer,
``log_mel_spectrogram``, ``detect_language`` on encoded audio and
``timing.add_word_timestamps``. What is left here: language detection
restricted to the supported languages, by giving a copy of the tokenizer
other language lists (they are cached properties of a frozen dataclass).
An upgrade of whisper is this file's work: check it, then add the version.
"""

from __future__ import annotations

import dataclasses

from whisper.model import Whisper
from whisper.tokenizer import LANGUAGES, Tokenizer, get_tokenizer
from whisper.version import __version__ as WHISPER_VERSION

from asr_server.contract.domain import SUPPORTED_LANGUAGES

KNOWN_VERSIONS = ("20250625",)
if WHISPER_VERSION not in KNOWN_VERSIONS:
    raise ImportError(f"asr_server is checked against openai-whisper {', '.join(KNOWN_VERSIONS)}, "
                      f"not {WHISPER_VERSION}: see asr_server/engine/whisper_compat.py")


def restricted_language_tokenizer(model: Whisper) -> Tokenizer:
    """A tokenizer whose language tokens are the supported languages' only, for ``detect_language``.

    Without it, Bulgarian is often detected as Macedonian and Ukrainian as
    Russian's neighbours outside the list, which the server could not honour.
    """
    base = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language="en")
    restricted = dataclasses.replace(base)  # a copy: get_tokenizer's result is shared
    codes = tuple(code for code in LANGUAGES if code in SUPPORTED_LANGUAGES)
    restricted.__dict__["all_language_codes"] = codes
    restricted.__dict__["all_language_tokens"] = tuple(restricted.to_language_token(c) for c in codes)
    return restricted
