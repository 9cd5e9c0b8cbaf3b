"""Word timestamps: whisper's own alignment (cross-attention and DTW) on a window's final segments.

``WordTiming.add`` is what the loop hands each request's windows (transcribe_state.py calls it on a
window's segments once they are final). ``warm_up`` runs it once at start on a made-up segment over
silence, so its DTW (numba on the CPU, Triton kernels on CUDA) compiles before any request waits.
"""

from __future__ import annotations

from typing import Any

import torch
import whisper
from whisper.model import Whisper
from whisper.timing import add_word_timestamps
from whisper.tokenizer import Tokenizer

from asr_server.engine.transcribe_state import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS


class WordTiming:
    def __init__(self, model: Whisper, dtype: torch.dtype) -> None:
        self.model, self.dtype = model, dtype
        self.device = model.decoder.token_embedding.weight.device

    def add(self, segments: list[dict[str, Any]], tokenizer: Tokenizer, mel: torch.Tensor, frames: int,
            last_speech: float) -> None:
        """Each segment's ``words``, in place (whisper.timing.add_word_timestamps's contract)."""
        add_word_timestamps(segments=segments, model=self.model, tokenizer=tokenizer,
                            mel=mel.to(self.device, self.dtype), num_frames=frames,
                            prepend_punctuations=PREPEND_PUNCTUATIONS,
                            append_punctuations=APPEND_PUNCTUATIONS, last_speech_timestamp=last_speech)

    def warm_up(self, tokenizer: Tokenizer) -> None:
        mel = mel_of(torch.zeros(whisper.audio.SAMPLE_RATE, device=self.device), self.model.dims.n_mels)
        segment: dict[str, Any] = {"seek": 0, "start": 0.0, "end": 1.0,
                                   "tokens": tokenizer.encode(" Warm up.")}
        with torch.inference_mode():
            self.add([segment], tokenizer, mel[:, : whisper.audio.N_FRAMES], whisper.audio.FRAMES_PER_SECOND,
                     0.0)


def mel_of(samples: torch.Tensor, n_mels: int) -> torch.Tensor:
    """whisper's mel of a whole request, with the 30 s of padding its transcribe() adds."""
    mel: torch.Tensor = whisper.log_mel_spectrogram(samples, n_mels, padding=whisper.audio.N_SAMPLES)
    return mel
