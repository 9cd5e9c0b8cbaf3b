"""The domain without I/O: what a request asks of the engine and what comes back.

Every transport (WebSocket frames, OpenAI's forms and events) turns its own
wire format into ``TranscribeOptions`` and renders a ``Transcription`` with
its ``PostprocessOutcome``; the engine sees nothing else of a request.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_LANGUAGES: tuple[str, ...] = (
    "bg", "en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "cs", "da", "sv",
    "hr", "el", "hu", "ro", "sk", "sl", "et", "fi", "lv", "lt", "mt", "uk",
)
TASKS = ("transcribe", "translate")

# The supported languages' names, as whisper's tokenizer spells them (OpenAI's verbose_json
# carries the name); kept here so that the contract needs no whisper (and no torch).
LANGUAGE_NAMES: dict[str, str] = {
    "bg": "bulgarian", "en": "english", "de": "german", "fr": "french", "es": "spanish",
    "it": "italian", "pt": "portuguese", "nl": "dutch", "pl": "polish", "ru": "russian",
    "cs": "czech", "da": "danish", "sv": "swedish", "hr": "croatian", "el": "greek",
    "hu": "hungarian", "ro": "romanian", "sk": "slovak", "sl": "slovenian", "et": "estonian",
    "fi": "finnish", "lv": "latvian", "lt": "lithuanian", "mt": "maltese", "uk": "ukrainian",
}


@dataclass(frozen=True)
class TranscribeOptions:
    """What the engine needs of a request."""

    language: str | None  # None: detect among SUPPORTED_LANGUAGES
    task: str  # "transcribe" | "translate"
    prompt: str | None = None  # names and terms the speaker uses (whisper's initial prompt)
    word_timestamps: bool = False
    temperature: float = 0.0  # the first; whisper falls back to hotter ones from here
    beam_size: int | None = None  # None: the server's ASR_BEAM_SIZE
    # False (a live hypothesis): one temperature, and a window that fails whisper's checks gives no text.
    fallback: bool = True
    # True (live): the encoder reads the audio and a few seconds of padding, not a whole 30 s window
    # (engine/transcribe_state.py); not with word timestamps, whose alignment takes 30 s.
    fit_window: bool = False
    # Live: the words already committed in the buffer. The first window's text begins with them,
    # given as one segment from 0 s and read in one pass, so only what follows is decoded.
    prefix: str | None = None
    # At most this many tokens decoded per window (whisper's sample_len; None: its n_ctx // 2). Live
    # bounds a decode by what its audio can hold, so a decode that loops ends soon.
    sample_len: int | None = None


@dataclass(frozen=True)
class Word:
    word: str  # as whisper spells it, with its leading space
    start: float  # seconds
    end: float  # seconds
    probability: float


@dataclass(frozen=True)
class Segment:
    text: str
    start: float  # seconds
    end: float  # seconds
    words: tuple[Word, ...] | None = None  # only when the request asked for word timestamps


@dataclass(frozen=True)
class Transcription:
    """What the engine returns for one request."""

    text: str
    segments: tuple[Segment, ...]
    language: str


@dataclass(frozen=True)
class PostprocessOutcome:
    """The three post-processing fields of a result, and whether an LLM call was made or waited for."""

    text: str | None = None
    ms: float = 0.0
    error: str | None = None
    called: bool = False
