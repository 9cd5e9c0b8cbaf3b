"""asr-client: a light client for asr-server (websockets and soundfile; no torch)."""
