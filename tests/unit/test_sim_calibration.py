"""Calibration: the model fitted to a measured level, and its predictions of others with their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sim.calibration import Measured, Shares, compare, fit, machine_for, within_targets
from sim.capacity import run

CPU_MS = {"api": 3.4, "psp": 1.25, "postgres": 1.2, "host": 0.7, "ray": 0.6, "client": 0.36,
          "haproxy": 0.27, "relay": 0.26, "redis": 0.1, "other": 0.3}  # fmt: skip


def as_measured(clients: int, share: float) -> Measured:
    """What the model itself says at ``clients``, with the API's path share ``share``, as if measured."""
    level = Measured(clients, 8, 0.0, 0.0, 0.0, CPU_MS, mean_batch=2.0)
    outcome = run(machine_for(level, replace(Shares(), api=share)), clients, charges=1500, warmup=200)
    return replace(
        level, per_s=outcome.per_s, p50_ms=outcome.p50_ms, p99_ms=outcome.p99_ms,
        quantiles_ms=outcome.quantiles_ms,
    )  # fmt: skip


def test_the_machine_spends_what_was_measured_per_charge_at_the_measured_batch() -> None:
    level = Measured(8, 8, 200.0, 40.0, 60.0, CPU_MS, mean_batch=4.0)
    spent = machine_for(level).cpu_per_charge()
    host_at_batch = spent["host"] - 0.0015 + 0.0015 / 4  # cpu_per_charge counts a batch of one
    assert host_at_batch == pytest.approx(0.0007)
    assert spent["api"] == pytest.approx(0.0034) and spent["psp"] == pytest.approx(0.00125)


def test_a_fit_finds_the_path_share_that_made_the_measurement_and_predicts_other_levels() -> None:
    truth = 0.6
    fitted = fit(as_measured(1, truth), charges=1500)
    assert fitted.shares.api == pytest.approx(truth, abs=0.1)
    comparisons = compare(fitted, [as_measured(4, truth), as_measured(32, truth)], charges=1500)
    assert all(abs(error) < 0.1 for c in comparisons for error in c.errors.values()), [
        c.errors for c in comparisons
    ]
    assert within_targets(comparisons)


def test_a_level_with_a_component_the_model_does_not_know_is_refused() -> None:
    body = as_measured(2, 0.5).to_json() | {"cpu_ms": {"api": 1.0, "mystery": 2.0}}
    with pytest.raises(ValueError, match="mystery"):
        Measured.from_json(body)


def _calibrate(measured: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", "calibrate", "--measured", str(measured), *more],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_payray_simulate_calibrate_prints_predicted_beside_measured(tmp_path: Path) -> None:
    measured = tmp_path / "levels.json"
    measured.write_text(json.dumps([as_measured(c, 0.6).to_json() for c in (1, 4, 32)]))
    out = tmp_path / "calibration.json"
    done = _calibrate(measured, "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "predicted" in done.stdout and "saturates first" in done.stdout
    result = json.loads(out.read_text())
    assert [level["clients"] for level in result["levels"]] == [4, 32]


@pytest.mark.parametrize("body", ["{}", "[]", '[{"clients": 1}]', "not json"])
def test_a_file_that_is_not_measured_levels_is_refused(tmp_path: Path, body: str) -> None:
    measured = tmp_path / "levels.json"
    measured.write_text(body)
    done = _calibrate(measured)
    assert done.returncode == 2, done.stdout + done.stderr
