"""The ops page's figures: rates from cumulative totals, quantiles from histogram buckets, and statuses."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.figures import LATENCY_BOUNDS, ReplicaTotals, Sample, Traffic, frame, quantile


def latencies(*seconds: float) -> tuple[int, ...]:
    """Cumulative buckets holding these observations, as Prometheus would count them."""
    return tuple(sum(1 for s in seconds if s <= bound) for bound in LATENCY_BOUNDS)


def traffic(*seconds: float, errors: int = 0, rejected: int = 0) -> Traffic:
    return Traffic(len(seconds), errors, rejected, latencies(*seconds))


def replica(rid: str, at: float, charges: Traffic, psp: Traffic | None = None) -> ReplicaTotals:
    return ReplicaTotals(rid, "n1", at, {"charges": charges}, psp or Traffic(), 0)


def sample(at: float, *replicas: ReplicaTotals, hosts: dict[int, Any] | None = None, **gauges: Any) -> Sample:
    return Sample(at, {r.replica: r for r in replicas}, hosts or {}, True, gauges)


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    # 100 requests, all between 10 and 25 ms: the median sits halfway through that bucket
    assert quantile(0.5, latencies(*[0.02] * 100)) == pytest.approx(0.0175)
    assert quantile(0.99, latencies(*[0.003] * 99, 0.4)) == pytest.approx(0.005)
    assert quantile(0.5, latencies()) is None


def test_a_quantile_beyond_the_last_bound_is_that_bound() -> None:
    assert quantile(0.99, latencies(30.0, 40.0)) == 10.0


@given(st.lists(st.floats(min_value=0.0001, max_value=20), min_size=1, max_size=200))
def test_quantiles_rise_with_q_and_stay_within_the_observed_buckets(seconds: list[float]) -> None:
    buckets = latencies(*seconds)
    p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
    assert p50 is not None and p99 is not None and p50 <= p99
    finite = [b for b in LATENCY_BOUNDS if not math.isinf(b)]
    upper = next((b for b in finite if max(seconds) <= b), finite[-1])
    assert p99 <= upper


def test_rates_are_the_difference_over_the_time_between_samples() -> None:
    before = sample(100.0, replica("a", 100.0, traffic(*[0.02] * 10)))
    now = sample(105.0, replica("a", 105.0, traffic(*[0.02] * 10, *[0.2] * 50, errors=5)))
    figures = frame(before, now)
    assert figures["charges"]["per_s"] == 10.0
    assert figures["charges"]["error_rate"] == 0.1
    assert 100 < figures["charges"]["p50_ms"] <= 250  # the new requests only, not the first ten at 20 ms
    assert figures["clients"]["per_s"] == 10.0 and figures["webhooks"]["per_s"] == 0


def test_a_replica_that_restarted_counts_from_zero_again() -> None:
    before = sample(0.0, replica("a", 0.0, traffic(*[0.01] * 1000)))
    now = sample(2.0, replica("a", 2.0, traffic(*[0.01] * 8)))
    assert frame(before, now)["charges"]["per_s"] == 4.0


def test_replicas_add_up_and_a_silent_one_is_down() -> None:
    before = sample(0.0, replica("a", 0.0, Traffic()), replica("b", 0.0, Traffic()))
    now = sample(10.0, replica("a", 10.0, traffic(*[0.01] * 50)), replica("b", 3.0, traffic(*[0.01] * 30)))
    figures = frame(before, now)
    assert figures["charges"]["per_s"] == 8.0
    assert [(r["id"], r["up"]) for r in figures["replicas"]] == [("a", True), ("b", False)]
    assert figures["status"]["api"] == {"status": "degraded", "why": "1 of 2 replicas silent"}


def test_no_replica_publishing_is_the_api_down() -> None:
    figures = frame(sample(0.0), sample(5.0, replica("a", -10.0, Traffic())))
    assert figures["status"]["api"]["status"] == "down"


def test_a_psp_whose_every_call_fails_is_down_and_one_failing_some_is_degraded() -> None:
    def psp_figures(errors: int) -> dict[str, Any]:
        before = sample(0.0, replica("a", 0.0, Traffic(), psp=Traffic()))
        now = sample(1.0, replica("a", 1.0, Traffic(), psp=traffic(*[0.05] * 20, errors=errors)))
        return frame(before, now)["status"]["psp"]

    assert psp_figures(20)["status"] == "down"
    assert psp_figures(5) == {"status": "degraded", "why": "25% of calls failed"}
    assert psp_figures(0)["status"] == "ok"


def test_wallet_hosts_give_postings_per_second_and_a_silent_host_is_marked() -> None:
    hosts_before = {0: {"calls": 10, "writer_postings": 100, "writer_batches": 10}, 1: {"calls": 0}}
    hosts_now = {
        0: {"calls": 30, "writer_postings": 300, "writer_batches": 20, "wallets": 7, "writer_queued": 3},
        1: None,
    }
    figures = frame(sample(0.0, hosts=hosts_before), sample(4.0, hosts=hosts_now))
    ledger = {"postings_per_s": 50.0, "batches_per_s": 2.5, "mean_batch": 20.0, "queued": 3}
    assert figures["ledger"] == ledger
    assert figures["wallet_hosts"][1] == {"index": 1, "up": False}
    assert figures["status"]["wallets"] == {"status": "degraded", "why": "host 1 silent"}


def test_the_gauges_mark_the_database_the_janitor_reconciliation_and_the_invariants() -> None:
    gauges = {
        "database": {"up": False},
        "janitor": {"up": True, "last_sweep_at": 0.0, "interval_s": 30.0},
        "reconciliation": {"open": 2},
        "invariants": {"ok": False, "failing": ["no_double_capture"]},
    }
    status = frame(sample(990.0), sample(1000.0, **gauges))["status"]
    assert status["postgres"]["status"] == "down"
    assert status["janitor"] == {"status": "degraded", "why": "no recent sweep"}
    assert status["reconciliation"] == {"status": "degraded", "why": "2 open discrepancies"}
    assert status["invariants"] == {"status": "down", "why": "no_double_capture"}


def test_totals_survive_their_trip_through_json() -> None:
    one = replica("a", 1.5, traffic(0.01, 0.3, errors=1, rejected=1), psp=traffic(0.2))
    assert ReplicaTotals.from_json(one.to_json()) == one
    with pytest.raises(ValueError):
        Traffic.from_json({"count": 1, "errors": 0, "rejected": 0, "buckets": [1, 1]})
