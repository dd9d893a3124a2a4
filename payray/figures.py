"""Live figures from cumulative totals: what the ops page shows, and whether each part of the system is well.

The parts publish totals that only grow (requests by route group, histogram buckets, PSP calls, postings);
a figure is the difference between two samples over the time between them. A total that went down belongs to
a process that restarted, so its new total is the whole difference, as Prometheus's ``rate()`` treats a
counter reset. No clock is read here: every sample carries its time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Latency histogram bounds in seconds (Prometheus ``le``), the last one catching everything.
LATENCY_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)

#: A replica whose latest totals are older than this is down (it publishes every second).
REPLICA_SILENT_S = 5.0
#: Error share above which a part is degraded; a part whose every call failed is down.
DEGRADED_ERROR_RATE = 0.05
#: Postings waiting for a wallet host's writer above which the host is degraded.
DEGRADED_QUEUE = 1_000
#: The janitor is late when its last sweep is older than this many sweep intervals.
LATE_SWEEPS = 3


@dataclass(frozen=True)
class Traffic:
    """Cumulative requests of one route group (or calls to one dependency) in one process."""

    count: int = 0
    errors: int = 0  # answered 5xx, or no answer at all
    rejected: int = 0  # answered 4xx
    buckets: tuple[int, ...] = (0,) * len(LATENCY_BOUNDS)  # cumulative per bound, as Prometheus keeps them

    def since(self, old: Traffic | None) -> Traffic:
        """What happened between ``old`` and this; all of this if the process restarted in between."""
        if old is None or self.count < old.count:
            return self
        return Traffic(
            self.count - old.count,
            max(self.errors - old.errors, 0),
            max(self.rejected - old.rejected, 0),
            tuple(max(n - o, 0) for n, o in zip(self.buckets, old.buckets, strict=True)),
        )

    def plus(self, other: Traffic) -> Traffic:
        return Traffic(
            self.count + other.count,
            self.errors + other.errors,
            self.rejected + other.rejected,
            tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)),
        )

    def to_json(self) -> dict[str, Any]:
        counts = {"count": self.count, "errors": self.errors, "rejected": self.rejected}
        return {**counts, "buckets": list(self.buckets)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Traffic:
        buckets = tuple(int(n) for n in data.get("buckets", ()))
        if len(buckets) != len(LATENCY_BOUNDS):
            raise ValueError(f"{len(buckets)} buckets for {len(LATENCY_BOUNDS)} bounds")
        return cls(int(data["count"]), int(data["errors"]), int(data["rejected"]), buckets)


def quantile(q: float, buckets: Sequence[int], bounds: Sequence[float] = LATENCY_BOUNDS) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated inside its bucket as
    ``histogram_quantile`` does; ``None`` without observations. Beyond the last finite bound: that bound."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    total = buckets[-1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    below, lower = 0, 0.0
    for count, upper in zip(buckets, bounds, strict=True):
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        below, lower = count, upper
    return lower


@dataclass(frozen=True)
class Flow:
    """Traffic over a window: the figures on a box or an arrow."""

    per_s: float
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float  # errors / requests; 0 without requests
    errors_per_s: float
    rejected_per_s: float

    @classmethod
    def of(cls, traffic: Traffic, seconds: float) -> Flow:
        if seconds <= 0:
            raise ValueError("a window must last")

        def ms(q: float) -> float | None:
            seconds_at = quantile(q, traffic.buckets)
            return None if seconds_at is None else round(seconds_at * 1000, 1)

        return cls(
            per_s=round(traffic.count / seconds, 2),
            p50_ms=ms(0.5),
            p99_ms=ms(0.99),
            error_rate=round(traffic.errors / traffic.count, 4) if traffic.count else 0.0,
            errors_per_s=round(traffic.errors / seconds, 2),
            rejected_per_s=round(traffic.rejected / seconds, 2),
        )


@dataclass(frozen=True)
class ReplicaTotals:
    """What one API replica publishes every second: its totals since it started."""

    replica: str
    node: str
    at: float
    groups: Mapping[str, Traffic]  # route group -> traffic (charges, webhooks, api)
    psp: Traffic
    replays: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "node": self.node,
            "at": self.at,
            "groups": {name: t.to_json() for name, t in self.groups.items()},
            "psp": self.psp.to_json(),
            "replays": self.replays,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReplicaTotals:
        return cls(
            str(data["replica"]),
            str(data["node"]),
            float(data["at"]),
            {str(name): Traffic.from_json(t) for name, t in data["groups"].items()},
            Traffic.from_json(data["psp"]),
            int(data.get("replays", 0)),
        )


@dataclass(frozen=True)
class Sample:
    """The whole system at one moment, as the monitor read it.

    ``hosts`` maps a wallet host's index to its stats, or ``None`` for a host that did not answer.
    ``gauges`` carries what is shown as read (database counts, the janitor, reconciliation, invariants).
    """

    at: float
    replicas: Mapping[str, ReplicaTotals]
    hosts: Mapping[int, Mapping[str, float] | None]
    redis_up: bool
    gauges: Mapping[str, Any] = field(default_factory=dict)


#: The route groups that clients (merchants' backends) send; webhooks come from the PSP.
CLIENT_GROUPS = ("charges", "api")


def _sum(traffics: Sequence[Traffic]) -> Traffic:
    total = Traffic()
    for t in traffics:
        total = total.plus(t)
    return total


def _host_increase(new: Mapping[str, float], old: Mapping[str, float] | None, key: str) -> float:
    if old is None:
        return 0.0
    n, o = float(new.get(key, 0)), float(old.get(key, 0))
    return n - o if n >= o else n


def frame(before: Sample, now: Sample) -> dict[str, Any]:
    """The figures between two samples, per part of the system, and each part's status."""
    seconds = now.at - before.at
    live = {rid: r for rid, r in now.replicas.items() if now.at - r.at <= REPLICA_SILENT_S}

    def group(name: str, rid: str) -> Traffic:
        r = now.replicas[rid]
        old = before.replicas.get(rid)
        return r.groups.get(name, Traffic()).since(old.groups.get(name) if old else None)

    per_replica = {rid: {g: group(g, rid) for g in ("charges", "webhooks", "api")} for rid in now.replicas}
    charges = _sum([p["charges"] for p in per_replica.values()])
    webhooks = _sum([p["webhooks"] for p in per_replica.values()])
    clients = _sum([p[g] for p in per_replica.values() for g in CLIENT_GROUPS])
    psp = _sum([r.psp.since(before.replicas[rid].psp if rid in before.replicas else None)
                for rid, r in now.replicas.items()])  # fmt: skip
    replays = sum(
        max(r.replays - before.replicas[rid].replays, 0) if rid in before.replicas else r.replays
        for rid, r in now.replicas.items()
    )
    replicas = [
        {
            "id": rid,
            "node": r.node,
            "up": rid in live,
            **_flow(_sum([per_replica[rid][g] for g in CLIENT_GROUPS]), seconds),
        }
        for rid, r in sorted(now.replicas.items(), key=lambda item: (item[1].node, item[0]))
    ]
    hosts: list[dict[str, Any]] = []
    for index, stats in sorted(now.hosts.items()):
        if stats is None:
            hosts.append({"index": index, "up": False})
            continue
        old = before.hosts.get(index)
        hosts.append({
            "index": index,
            "up": True,
            "wallets": int(stats.get("wallets", 0)),
            "queued": int(stats.get("writer_queued", 0)),
            "writing": int(stats.get("writer_writing", 0)),
            "calls_per_s": round(_host_increase(stats, old, "calls") / seconds, 2),
            "postings_per_s": round(_host_increase(stats, old, "writer_postings") / seconds, 2),
            "batches_per_s": round(_host_increase(stats, old, "writer_batches") / seconds, 2),
        })  # fmt: skip
    postings = sum(h.get("postings_per_s", 0.0) for h in hosts)
    batches = sum(h.get("batches_per_s", 0.0) for h in hosts)
    figures: dict[str, Any] = {
        "at": now.at,
        "window_s": round(seconds, 3),
        "clients": _flow(clients, seconds),
        "charges": _flow(charges, seconds),
        "webhooks": _flow(webhooks, seconds),
        "psp": _flow(psp, seconds),
        "replays_per_s": round(replays / seconds, 2),
        "replicas": replicas,
        "wallet_hosts": hosts,
        "ledger": {
            "postings_per_s": round(postings, 2),
            "batches_per_s": round(batches, 2),
            "mean_batch": round(postings / batches, 1) if batches else None,
            "queued": sum(h.get("queued", 0) for h in hosts),
        },
        "redis_up": now.redis_up,
        **now.gauges,
    }
    figures["status"] = statuses(figures)
    return figures


def _flow(traffic: Traffic, seconds: float) -> dict[str, Any]:
    flow = Flow.of(traffic, seconds)
    return {
        "per_s": flow.per_s,
        "p50_ms": flow.p50_ms,
        "p99_ms": flow.p99_ms,
        "error_rate": flow.error_rate,
        "errors_per_s": flow.errors_per_s,
        "rejected_per_s": flow.rejected_per_s,
    }


def _by_errors(flow: Mapping[str, Any]) -> str:
    if flow["per_s"] > 0 and flow["error_rate"] >= 1:
        return "down"
    return "degraded" if flow["error_rate"] > DEGRADED_ERROR_RATE else "ok"


def statuses(figures: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each part's status (``ok``, ``degraded`` or ``down``) and why, from one frame's figures."""
    out: dict[str, dict[str, str]] = {}

    def put(part: str, status: str, why: str = "") -> None:
        out[part] = {"status": status, "why": why}

    replicas = figures["replicas"]
    up = sum(1 for r in replicas if r["up"])
    if not up:
        put("api", "down", "no replica publishes")
    elif up < len(replicas) or _by_errors(figures["clients"]) != "ok":
        why = f"{len(replicas) - up} of {len(replicas)} replicas silent" if up < len(replicas) else ""
        put("api", "degraded", why or f"{figures['clients']['error_rate']:.0%} of requests failed")
    else:
        put("api", "ok")
    put("redis", "ok" if figures["redis_up"] else "down", "" if figures["redis_up"] else "no answer")
    psp = _by_errors(figures["psp"])
    put("psp", psp, "" if psp == "ok" else f"{figures['psp']['error_rate']:.0%} of calls failed")
    webhooks = _by_errors(figures["webhooks"])
    put("webhooks", webhooks, "" if webhooks == "ok" else f"{figures['webhooks']['error_rate']:.0%} refused")
    hosts = figures["wallet_hosts"]
    down = [str(h["index"]) for h in hosts if not h["up"]]
    busy = [str(h["index"]) for h in hosts if h["up"] and h["queued"] > DEGRADED_QUEUE]
    if hosts and len(down) == len(hosts):
        put("wallets", "down", "no wallet host answers")
    elif down or busy:
        why = f"host {', '.join(down)} silent" if down else f"host {', '.join(busy)} backed up"
        put("wallets", "degraded", why)
    else:
        put("wallets", "ok")
    put("ledger", "down" if hosts and len(down) == len(hosts) else "ok")
    database = figures.get("database")
    if database is not None:
        put("postgres", "ok" if database.get("up") else "down", "" if database.get("up") else "no answer")
    janitor = figures.get("janitor")
    if janitor is not None:
        last, interval = janitor.get("last_sweep_at"), janitor.get("interval_s")
        if not janitor.get("up"):
            put("janitor", "down", "the sweeper does not answer")
        elif last is None or (interval and figures["at"] - last > LATE_SWEEPS * interval):
            put("janitor", "degraded", "no recent sweep")
        else:
            put("janitor", "ok")
    reconciliation = figures.get("reconciliation")
    if reconciliation is not None:
        open_ = reconciliation.get("open", 0)
        put("reconciliation", "degraded" if open_ else "ok", f"{open_} open discrepancies" if open_ else "")
    invariants = figures.get("invariants")
    if invariants is not None and invariants.get("ok") is not None:
        failing = invariants.get("failing", [])
        put("invariants", "ok" if invariants["ok"] else "down", ", ".join(failing))
    return out
