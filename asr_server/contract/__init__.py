"""The contract: the domain types, the errors with their codes, the WebSocket frames, OpenAI's formats.

No I/O and no torch: every transport and the engine depend on it, it on nothing of theirs.
"""
