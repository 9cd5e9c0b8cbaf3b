"""Config from the environment: defaults, parsing, and one line per mistake."""

from __future__ import annotations

import os

import pytest

from asr_server.config import Config, ConfigError, is_loopback


def test_defaults() -> None:
    config = Config.from_env({"SERVER_API_KEY": "k"})
    assert (config.host, config.port, config.beam_size, config.device) == ("0.0.0.0", 8765, 5, "auto")
    assert config.max_audio_seconds == 1800 and config.metadata_timeout_s == 10
    assert config.audio_timeout_s == 30
    # 30 minutes of 48 kHz 16-bit mono, plus header room.
    assert config.effective_max_audio_bytes == 1800 * 48_000 * 4 + 64 * 1024  # mono Float32 at 48 kHz


def test_keys_are_a_comma_separated_list_and_never_printed() -> None:
    config = Config.from_env({"SERVER_API_KEY": " key-alpha-7 , key-beta-9,,", "HOST": "127.0.0.1"})
    assert config.api_keys == ("key-alpha-7", "key-beta-9")
    assert "key-alpha" not in repr(config) and "key-beta" not in repr(config)


def test_every_mistake_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env({"PORT": "eighty", "ASR_BEAM_SIZE": "0", "ASR_DEVICE": "tpu",
                         "ALLOW_NO_AUTH": "maybe", "MAX_AUDIO_SECONDS": "-1", "LOG_LEVEL": "LOUD"})
    problems = info.value.problems
    for name in ("PORT", "ASR_BEAM_SIZE", "ASR_DEVICE", "ALLOW_NO_AUTH", "MAX_AUDIO_SECONDS", "LOG_LEVEL"):
        assert sum(p.startswith(f"{name}=") for p in problems) == 1, problems


def test_open_host_without_key_is_refused_unless_meant() -> None:
    with pytest.raises(ConfigError, match="SERVER_API_KEY"):
        Config.from_env({"HOST": "0.0.0.0"})
    assert Config.from_env({"HOST": "0.0.0.0", "ALLOW_NO_AUTH": "1"}).allow_no_auth
    assert Config.from_env({"HOST": "127.0.0.1"}).api_keys == ()
    assert Config.from_env({"HOST": "::1"}).api_keys == ()


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("ON", True), ("false", False),
                                            ("0", False), ("off", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert Config.from_env({"HOST": "127.0.0.1", "ASR_VAD": raw}).vad is value


def test_devices() -> None:
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert Config.from_env({"HOST": "127.0.0.1", "ASR_DEVICE": device}).device == device


def test_model_is_a_name_or_a_path(tmp_path: object) -> None:
    assert Config(model="base").model_path.name == "base.pt"
    assert str(Config(model="/opt/models/large-v3.pt").model_path) == "/opt/models/large-v3.pt"


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


def test_pending_connections_are_sized_for_the_host_unless_set() -> None:
    auto = Config().effective_max_pending_connections
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert auto == max(64, min(4096, memory // (64 << 20)))
    env = {"HOST": "127.0.0.1"}
    assert Config.from_env({**env, "MAX_PENDING_CONNECTIONS": "7"}).effective_max_pending_connections == 7
    with pytest.raises(ConfigError, match="MAX_PENDING_CONNECTIONS"):
        Config.from_env({**env, "MAX_PENDING_CONNECTIONS": "-1"})


def test_the_wait_for_an_llm_slot_is_bounded_apart_from_the_call() -> None:
    config = Config.from_env({"HOST": "127.0.0.1"})
    assert (config.postprocess_timeout_s, config.postprocess_slot_wait_s) == (10, 10)
    config = Config.from_env({"HOST": "127.0.0.1", "POSTPROCESS_SLOT_WAIT_S": "0",
                              "POSTPROCESS_TIMEOUT_S": "30"})
    assert (config.postprocess_timeout_s, config.postprocess_slot_wait_s) == (30, 0)
    with pytest.raises(ConfigError, match=r"POSTPROCESS_SLOT_WAIT_S=.*\[0, 600\]"):
        Config.from_env({"HOST": "127.0.0.1", "POSTPROCESS_SLOT_WAIT_S": "-1"})


def test_live_limits() -> None:
    config = Config.from_env({"SERVER_API_KEY": "k"})
    assert (config.max_live_sessions, config.live_max_session_s, config.live_idle_timeout_s,
            config.live_max_buffer_s, config.live_beam_size) == (4, 3600.0, 60.0, 30.0, 0)
    assert config.live_fit_window
    assert not Config.from_env({"SERVER_API_KEY": "k", "LIVE_FIT_WINDOW": "0"}).live_fit_window
    with pytest.raises(ConfigError) as info:
        Config.from_env({"SERVER_API_KEY": "k", "MAX_LIVE_SESSIONS": "-1", "LIVE_MAX_BUFFER_S": "5",
                         "LIVE_BEAM_SIZE": "6", "LIVE_IDLE_TIMEOUT_S": "0", "LIVE_FIT_WINDOW": "maybe"})
    names = sorted(p.split("=")[0] for p in info.value.problems)
    assert names == ["LIVE_BEAM_SIZE", "LIVE_FIT_WINDOW", "LIVE_IDLE_TIMEOUT_S", "LIVE_MAX_BUFFER_S",
                     "MAX_LIVE_SESSIONS"]
