"""The one place that relies on openai-whisper beyond what it publishes; checked against its version.

The rest of the server uses whisper's model modules, its tokenizer,
``log_mel_spectrogram`` and ``timing.add_word_timestamps``. What is left here:

- language detection restricted to the supported languages, by giving a
  copy of the tokenizer other language lists (they are cached properties of
  a frozen dataclass);
- the encoder's forward pass on a window shorter than 30 s (a live decode's
  fitted window: transcribe_state.py), which ``AudioEncoder.forward``
  refuses: the same layers, with the positional embedding cut to the
  window's length, and language detection on its output, which
  ``Whisper.detect_language`` would take for a mel.

An upgrade of whisper is this file's work: check it, then add the version.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor
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


def encode(model: Whisper, mels: Tensor) -> Tensor:
    """The encoder's output (windows, frames / 2, state) for mels (windows, n_mels, frames), frames at
    most 3000: whisper's ``AudioEncoder.forward``, which asserts the whole 30 s."""
    encoder = model.encoder
    if mels.shape[-1] == 2 * encoder.positional_embedding.shape[0]:
        return encoder(mels)  # type: ignore[no-any-return]
    x = F.gelu(encoder.conv1(mels))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)  # type: ignore[no-any-return]


def detect_language(model: Whisper, features: Tensor, tokenizer: Tokenizer) -> str:
    """The most probable of ``tokenizer``'s languages for one window's encoder output (frames, state),
    of any length: whisper's ``detect_language`` after its encoder."""
    sot = torch.tensor([[tokenizer.sot]], device=features.device)
    logits = model.logits(sot, features.unsqueeze(0))[0, 0]
    tokens = list(tokenizer.all_language_tokens)
    best = int(logits[tokens].argmax())
    return str(tokenizer.all_language_codes[best])
