"""asr-client: a light client for asr-server (websockets and soundfile; no torch).

The package's public names: ``transcribe`` and its ``Result``/``Segment``/``Word``,
and ``AsrClientError`` (with ``code`` and ``exit_code``); the id is
``asr_client.machine_id.machine_id()``, not re-exported here, where the name
would hide the module. The modules own: ``api`` the exchange, ``audio`` the
conversion to WAV, ``errors`` the codes, ``machine_id`` with ``hw_*`` the
fingerprint, ``cli`` and ``progress`` the command, ``subtitles`` SRT and WebVTT
(shared with the server).
"""

from asr_client.api import Result, Segment, Word, transcribe
from asr_client.errors import AsrClientError

__all__ = ["AsrClientError", "Result", "Segment", "Word", "transcribe"]
