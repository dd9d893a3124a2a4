"""Prometheus metrics of one API replica, and the totals it publishes for the ops page."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payray.figures import LATENCY_BOUNDS, ReplicaTotals, Traffic

#: Routes an operator's tools call (scrapes, probes, the ops page): counted, never as client traffic.
OPS_ROUTES = frozenset({
    "GET /metrics", "GET /healthz", "GET /dashboard", "POST /dashboard/login", "POST /dashboard/logout",
    "GET /dashboard/{asset}", "GET /v1/admin/dashboard", "GET /openapi.json",
})  # fmt: skip
CHARGES = "POST /v1/charges"
#: The route groups the ops page shows (``ops`` is counted in /metrics only).
TRAFFIC_GROUPS = ("charges", "webhooks", "api")
PSP_WEBHOOKS = frozenset({"POST /v1/webhooks/psp", "POST /v1/webhooks/braintree"})


def route_group(route: str) -> str:
    """The ops page's name for a route's traffic: ``charges``, ``webhooks`` (from the PSP), ``ops`` or
    ``api`` (everything else merchants send)."""
    if route == CHARGES:
        return "charges"
    if route in PSP_WEBHOOKS:
        return "webhooks"
    return "ops" if route in OPS_ROUTES else "api"


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
            buckets=LATENCY_BOUNDS,
            registry=self.registry,
        )
        self.psp_requests = Counter(
            "payray_psp_requests",
            "HTTP requests to the PSP by status (none: no answer); each retry is one",
            ["status"],
            registry=self.registry,
        )
        self.psp_latency = Histogram(
            "payray_psp_request_seconds",
            "Seconds from a request to the PSP to its answer's headers",
            buckets=LATENCY_BOUNDS,
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

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_psp_call(self, seconds: float, status: int | None) -> None:
        self.psp_requests.labels("none" if status is None else str(status)).inc()
        self.psp_latency.observe(seconds)

    def totals(self, replica: str, node: str, at: float) -> ReplicaTotals:
        """Everything this replica has counted since it started, by route group, for the ops page."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # group -> count, 5xx, 4xx
        for sample in _samples(self.requests, "_total"):
            _add_status(counts[route_group(sample.labels["route"])], sample.labels["status"], sample.value)
        buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BOUNDS))
        for sample in _samples(self.latency, "_bucket"):
            group = buckets[route_group(sample.labels["route"])]
            group[LATENCY_BOUNDS.index(_bound(sample.labels["le"]))] += int(sample.value)
        groups = {name: _traffic(counts[name], buckets[name]) for name in TRAFFIC_GROUPS}
        psp = [0, 0, 0]
        for sample in _samples(self.psp_requests, "_total"):
            _add_status(psp, sample.labels["status"], sample.value)
        psp_buckets = [0] * len(LATENCY_BOUNDS)
        for sample in _samples(self.psp_latency, "_bucket"):
            psp_buckets[LATENCY_BOUNDS.index(_bound(sample.labels["le"]))] += int(sample.value)
        replays = sum(int(s.value) for s in _samples(self.replays, "_total"))
        return ReplicaTotals(replica, node, at, groups, _traffic(psp, psp_buckets), replays)


def _samples(metric: Counter | Histogram, suffix: str) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]


def _traffic(counts: list[int], buckets: list[int]) -> Traffic:
    count, errors, rejected = counts
    return Traffic(count, errors, rejected, tuple(buckets))


def _add_status(into: list[int], status: str, value: float) -> None:
    """Count a request into ``[count, errors, rejected]``: no answer or 5xx is an error, 4xx a refusal."""
    into[0] += int(value)
    if status == "none" or status.startswith("5"):
        into[1] += int(value)
    elif status.startswith("4"):
        into[2] += int(value)


def _bound(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


#: This process's metrics, once its replica has made them: a replica is one process, and the middleware,
#: copied into the app Serve runs, finds them here.
_installed: ApiMetrics | None = None


def install(metrics: ApiMetrics) -> None:
    global _installed
    _installed = metrics


class ObserveRequests:
    """ASGI middleware, outermost: every request's route, status and seconds, the unplanned 500s too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = _installed
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            path = getattr(scope.get("route"), "path", None)
            route = f"{scope['method']} {path}" if path else "unrouted"
            metrics.observe_request(route, status, time.perf_counter() - started)
