"""The engine: the scheduler in front of one worker thread, and all the torch code that thread runs.

scheduler -> decoding_loop (admit, encode, one decoder pass, settle) over forward (the KV cache and
the passes), search (greedy, sampling, beam, whisper's logit rules) and transcribe_state (whisper's
transcribe() rules per 30 s window); transcriber turns samples into jobs' answers; model_loading,
whisper_compat, audio_decoding and vad are what it stands on.
"""
