"""The metrics module without a server: exact names, types and labels, and the label guard."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asr_server.metrics import OTHER, UNAUTHENTICATED, MachineIdGuard, Metrics, RequestOutcome


def families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_spec_metrics_exactly() -> None:
    metrics = Metrics(CollectorRegistry(), machine_id_cap=10)
    metrics.observe(RequestOutcome("ab12", "transcribe", "ok", 2.5, 0.4, 0.15))
    found = families(metrics)
    expected = {
        "asr_requests": ("counter", {"machine_id", "task", "status"}),
        "asr_audio_seconds": ("counter", {"machine_id", "task"}),
        "asr_processing_seconds": ("histogram", {"machine_id", "task"}),
        "asr_postprocess_seconds": ("histogram", {"machine_id", "task"}),
    }
    for name, (kind, labels) in expected.items():
        family = found[name]
        assert family.type == kind, name  # type: ignore[attr-defined]
        for sample in family.samples:  # type: ignore[attr-defined]
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    text = generate_latest(metrics.registry).decode()
    assert 'asr_requests_total{machine_id="ab12",status="ok",task="transcribe"} 1.0' in text
    assert 'asr_audio_seconds_total{machine_id="ab12",task="transcribe"} 2.5' in text
    assert 'asr_processing_seconds_bucket{le="0.05",machine_id="ab12",task="transcribe"} 0.0' in text
    assert 'asr_processing_seconds_bucket{le="300.0",machine_id="ab12",task="transcribe"} 1.0' in text


def test_failed_requests_count_but_add_no_audio() -> None:
    metrics = Metrics(CollectorRegistry(), machine_id_cap=10)
    metrics.observe(RequestOutcome(UNAUTHENTICATED, "unknown", "unauthorized", 0.0, None))
    metrics.observe(RequestOutcome("ab12", "transcribe", "invalid_audio", 0.0, 0.01))
    text = generate_latest(metrics.registry).decode()
    assert 'asr_requests_total{machine_id="unauthenticated",status="unauthorized",task="unknown"} 1.0' in text
    assert "asr_audio_seconds_total{" not in text
    assert 'asr_processing_seconds_count{machine_id="ab12",task="transcribe"} 1.0' in text
    assert 'asr_processing_seconds_count{machine_id="unauthenticated"' not in text


def test_guard_keeps_only_authenticated_id_like_values_up_to_the_cap() -> None:
    guard = MachineIdGuard(cap=3)
    assert guard.label("ABCDEF12", True) == "abcdef12"
    assert guard.label("abcdef12", True) == "abcdef12"
    assert guard.label("a" * 64, True) == "a" * 64
    assert guard.label("a" * 65, True) == "invalid"
    assert guard.label("not-hex!", True) == "invalid"
    assert guard.label("", True) == "invalid"
    assert guard.label("unknown", True) == "unknown"
    assert guard.label("0123", False) == UNAUTHENTICATED
    assert guard.label("11", True) == "11"
    assert guard.label("22", True) == OTHER  # the cap is reached
    assert guard.label("abcdef12", True) == "abcdef12"  # known ids stay
    assert guard.distinct == 3


def test_extra_metrics_are_prefixed() -> None:
    metrics = Metrics(CollectorRegistry(), machine_id_cap=10)
    metrics.model_info.info({"name": "base", "device": "cpu", "dtype": "float32", "precision": "int8"})
    assert all(name.startswith("asr_") for name in families(metrics))
    assert 'asr_model_info{device="cpu",dtype="float32",name="base",precision="int8"} 1.0' in generate_latest(
        metrics.registry).decode()
