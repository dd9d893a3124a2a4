"""PSP fault profiles: named settings of the emulator's ``/_emulator/faults`` for a load test.

Each profile also says what share of requests may still fail after the client's own retries: with the PSP
failing on purpose, some charges end in 502/503 and that is the service answering correctly.

An outage profile routes the run's merchants over both PSPs and takes one of them down for a share of the
run. The emulator takes an outage as a window of wall-clock unix seconds, so the window is placed when the
run starts (``FaultProfile.fault_settings``), relative to that start and to the run's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: When a charge was first sent, relative to the outage window (``run``: the profile has none).
Phase = Literal["before", "during", "after", "run"]


@dataclass(frozen=True)
class Outage:
    """One PSP down from ``start_share`` to ``end_share`` of the run: every request to it fails (a 503, or
    the connection reset), the other PSP untouched."""

    psp: Literal["stripe", "braintree"]
    start_share: float
    end_share: float
    mode: Literal["error", "reset"] = "error"

    def __post_init__(self) -> None:
        if not 0 <= self.start_share < self.end_share <= 1:
            raise ValueError("an outage lies within the run: 0 <= start_share < end_share <= 1")

    def window(self, started_at: float, run_time_s: float) -> tuple[float, float]:
        """The outage in unix seconds, for a run that started at ``started_at`` and lasts ``run_time_s``."""
        return started_at + self.start_share * run_time_s, started_at + self.end_share * run_time_s


@dataclass(frozen=True)
class FaultProfile:
    faults: dict[str, Any]
    max_fail_ratio: float
    #: each merchant's PSPs in order, set through the admin API before the run (None: left as they are)
    routing: tuple[str, ...] | None = None
    outage: Outage | None = None

    def fault_settings(self, started_at: float, run_time_s: float) -> list[dict[str, Any]]:
        """The bodies to POST to ``/_emulator/faults``, in order: ``faults`` for both PSPs, then the outage
        PSP's own, with its window placed in the run."""
        settings = [dict(self.faults)]
        if self.outage is not None:
            start, end = self.outage.window(started_at, run_time_s)
            window = {"start": start, "end": end, "mode": self.outage.mode}
            settings.append({**self.faults, "psp": self.outage.psp, "outages": [window]})
        return settings


def phase(at: float, window: tuple[float, float] | None) -> Phase:
    """Where ``at`` falls against the outage window; a run without one is one phase."""
    if window is None:
        return "run"
    start, end = window
    return "before" if at < start else "during" if at < end else "after"


def psp_of(psp_reference: str | None) -> str | None:
    """The PSP that made a charge, read from its reference: Stripe's PaymentIntents are ``pi_…``,
    Braintree's transactions short ids without a prefix. The API does not name the PSP, and a load test talks
    HTTP only."""
    if not psp_reference:
        return None
    return "stripe" if psp_reference.startswith("pi_") else "braintree"


BOTH_PSPS = ("stripe", "braintree")

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
    # Stripe answers 503 to everything for the middle third; merchants route Stripe first, then Braintree.
    # A 503 leaves the outcome unknown, so the charges Stripe gets until its breaker opens (and each probe
    # after) are answered 202 pending and settled by recovery at Stripe, never failed over: not failures.
    # New charges go to Braintree once the breaker is open. Nothing should answer 5xx.
    "stripe_outage": FaultProfile({}, 0.0, BOTH_PSPS, Outage("stripe", 1 / 3, 2 / 3, "error")),
    # The same window with every connection to Stripe reset instead: unknown outcomes again, so again 202s.
    "stripe_outage_reset": FaultProfile({}, 0.0, BOTH_PSPS, Outage("stripe", 1 / 3, 2 / 3, "reset")),
}
