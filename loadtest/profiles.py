"""PSP fault profiles: named settings of the emulator's ``/_emulator/faults`` for a load test.

Each profile also says what share of requests may still fail after the client's own retries: with the PSP
failing on purpose, some charges end in 502/503 and that is the service answering correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FaultProfile:
    faults: dict[str, Any]
    max_fail_ratio: float


PROFILES: dict[str, FaultProfile] = {
    "none": FaultProfile({}, 0.0),
    # A PSP answering like a real one over the internet: most calls quick, a long tail.
    "latency": FaultProfile({"latency_ms": {"dist": "exponential", "mean_ms": 40}}, 0.0),
    # One call in twenty fails with 503 before anything happens; the adapter's retries absorb most.
    "flaky": FaultProfile({"error_rate": 0.05, "latency_ms": {"dist": "uniform", "max_ms": 30}}, 0.02),
    # The PSP captures and the answer is lost: charges turn pending (202) and retries must not capture twice.
    "timeouts": FaultProfile({"timeout_after_capture_rate": 0.02, "hold_ms": 3000}, 0.02),
    "chaos": FaultProfile(
        {
            "latency_ms": {"dist": "exponential", "mean_ms": 20},
            "error_rate": 0.03,
            "timeout_after_capture_rate": 0.01,
            "hold_ms": 3000,
            "reset_after_rate": 0.01,
        },
        0.05,
    ),
}
