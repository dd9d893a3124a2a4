"""Fault configuration is validated strictly, and a seed reproduces the same faults."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from psp.emulator.faults import FaultConfig, Faults, FixedLatency, Injection


@pytest.mark.parametrize(
    "bad",
    [
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"error_status": 404},
        {"unknown_knob": 1},
        {"latency_ms": {"dist": "gamma", "ms": 3}},
        {"latency_ms": {"dist": "uniform", "min_ms": 50, "max_ms": 10}},
        {"latency_ms": {"dist": "fixed", "ms": 10, "extra": 1}},
        {"outages": [{"start": 10, "end": 5}]},
        {"decline_code": "not_a_code"},
        {"hold_ms": -1},
    ],
)
def test_invalid_configurations_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig.model_validate(bad)


def test_valid_configuration_round_trips_as_json() -> None:
    body = {
        "latency_ms": {"dist": "normal", "mean_ms": 20, "stddev_ms": 5},
        "error_rate": 0.1,
        "error_status": 429,
        "should_retry": False,
        "outages": [{"start": 1, "end": 2}],
        "only_paths": ["/v1/payment_intents"],
        "seed": 42,
    }
    config = FaultConfig.model_validate(body)
    assert FaultConfig.model_validate(config.model_dump(mode="json")) == config


def _sequence(seed: int) -> list[tuple[str | None, ...]]:
    faults = Faults(wall=lambda: 100.0)
    faults.configure(FaultConfig(error_rate=0.3, reset_after_rate=0.2, decline_rate=0.5, seed=seed))
    return [(faults.before(), faults.decline(), faults.after("POST")) for _ in range(200)]


def test_same_seed_same_faults() -> None:
    assert _sequence(7) == _sequence(7)
    assert _sequence(7) != _sequence(8)


def test_rates_are_roughly_honoured() -> None:
    errors = sum(1 for before, _, _ in _sequence(1) if before == "error")
    assert 30 <= errors <= 90


def test_zero_rates_inject_nothing_and_draw_nothing() -> None:
    faults = Faults()
    state = faults.rng.getstate()
    assert [faults.before() for _ in range(50)] == [None] * 50
    assert faults.after("POST") is None and faults.decline() is None and faults.latency_s() == 0.0
    assert faults.rng.getstate() == state


def test_outage_window_uses_wall_time() -> None:
    now = [100.0]
    faults = Faults(wall=lambda: now[0])
    faults.configure(FaultConfig.model_validate({"outages": [{"start": 150, "end": 200, "mode": "reset"}]}))
    assert faults.before() is None
    now[0] = 150.0
    assert faults.before() == "outage_reset"
    now[0] = 200.0
    assert faults.before() is None


def test_only_paths_limits_where_faults_apply() -> None:
    faults = Faults()
    faults.configure(FaultConfig(only_paths=["/v1/payment_intents"]))
    assert faults.applies("/v1/payment_intents/pi_1/confirm")
    assert not faults.applies("/v1/refunds")


def test_timeout_after_commit_only_for_posts() -> None:
    faults = Faults()
    faults.configure(FaultConfig(timeout_after_capture_rate=1.0))
    assert faults.after("GET") is None
    assert faults.after("POST") == "timeout_after_commit"


def test_latency_distributions_are_non_negative() -> None:
    faults = Faults()
    for latency in (
        {"dist": "fixed", "ms": 5},
        {"dist": "uniform", "min_ms": 1, "max_ms": 3},
        {"dist": "normal", "mean_ms": 1, "stddev_ms": 50},
        {"dist": "exponential", "mean_ms": 2},
    ):
        faults.configure(FaultConfig.model_validate({"latency_ms": latency}))
        samples = [faults.latency_s() for _ in range(100)]
        assert all(s >= 0 for s in samples)
    faults.configure(FaultConfig(latency_ms=FixedLatency(dist="fixed", ms=250)))
    assert faults.latency_s() == 0.25


def test_injection_record_is_reported_with_counts() -> None:
    faults = Faults()
    for kind in ("error", "error", "reset_after"):
        faults.record(
            Injection(at=1.0, kind=kind, method="POST", path="/v1/x", request_id=None, idempotency_key="k")
        )
    report = faults.report(limit=10, kind="error")
    assert report["total"] == 2 and report["counts"] == {"error": 2, "reset_after": 1}
    assert report["data"][0]["idempotency_key"] == "k"
