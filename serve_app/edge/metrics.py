"""Prometheus metrics of one API replica."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "payray_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "payray_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.transitions = Counter(
            "payray_charge_transitions",
            "Charge state transitions",
            ["event", "to_state"],
            registry=self.registry,
        )
        self.replays = Counter(
            "payray_idempotent_replays", "Responses replayed from an idempotency key", registry=self.registry
        )
        self.reconciliation_diffs = Gauge(
            "payray_recon_diffs",
            "Open reconciliation discrepancies by kind (recon.diffs): what waits for a person",
            ["kind"],
            registry=self.registry,
        )
        self.reconciliation_last_run = Gauge(
            "payray_recon_last_run_date_seconds",
            "The latest UTC day reconciled (its midnight, unix seconds): stale when nightly runs stop",
            registry=self.registry,
        )
