"""What a chaos run saw, and what it means: each fault's recovery, the requests it failed, the load over time.
Pure functions of the records the run keeps (requests as clients saw them, the faults as injected).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A probe answered later than this is not "answering normally", even when it succeeds.
SLOW_S = 2.0
#: Normal answers in a row that a recovery needs before the fault's slot ends.
STREAK = 3


@dataclass(frozen=True)
class Request:
    """One request as its client saw it. ``status`` 0: no answer (timeout, connection refused or reset)."""

    op: str
    key: str
    sent: float
    answered: float
    status: int
    ok: bool
    retry: bool = False
    object_id: str | None = None
    #: ``load`` (Locust), ``probe``, or the fault that sent it (``retry-storm``, ``hot-merchant``)
    source: str = "load"

    @property
    def latency_s(self) -> float:
        return self.answered - self.sent

    @property
    def normal(self) -> bool:
        return self.ok and self.latency_s <= SLOW_S

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Request:
        return cls(**{k: line[k] for k in cls.__dataclass_fields__ if k in line})


@dataclass(frozen=True)
class Injection:
    """A fault as it happened: when it began and ended (unix seconds), what it hit, or why it could not."""

    fault: str
    at: float
    ended: float
    detail: str = ""
    error: str | None = None


@dataclass(frozen=True)
class FaultResult:
    fault: str
    injected_s: float
    lasted_s: float
    #: from the fault's end (its kill, its outage lifted, its burst sent) until probes answered normally
    #: again (0: they never stopped); None: not recovered before the next fault
    recovered_s: float | None
    requests: int
    failed: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    detail: str = ""
    error: str | None = None

    @property
    def recovered(self) -> bool:
        return self.error is None and self.recovered_s is not None


def recovered_at(probes: Sequence[Request], start: float, until: float) -> float | None:
    """When the service answered normally again after ``start``: the answer of the first normal probe after
    the last abnormal one sent from ``start`` and answered before ``until``, followed by normal probes to
    ``until`` (at least ``STREAK``); ``start`` itself when no probe was abnormal. None: it had not recovered
    by ``until``."""
    # A probe still in flight at ``until`` met the next fault: it counts only if it was already slow.
    window = sorted(
        (p for p in probes if start <= p.sent and (p.answered < until or until - p.sent > SLOW_S)),
        key=lambda p: p.sent,
    )
    bad = [i for i, p in enumerate(window) if not p.normal]
    if not bad:
        return start if len(window) >= STREAK else None
    after = window[bad[-1] + 1 :]
    if len(after) < STREAK:
        return None
    return after[0].answered


def fault_result(
    injection: Injection, requests: Sequence[Request], until: float, origin: float
) -> FaultResult:
    """One fault's row: its recovery (timed by the probes), and the requests of its window, from the
    injection to the recovery (or ``until``), that failed or were retries."""
    probes = [r for r in requests if r.source == "probe"]
    back = recovered_at(probes, injection.at, until)
    end = max(back, injection.ended) if back is not None else until
    clients = [
        r
        for r in requests
        if r.source != "probe" and (injection.at <= r.sent <= end or r.sent < injection.at < r.answered)
    ]
    failed = Counter(status_name(r.status) for r in clients if not r.ok)
    return FaultResult(
        fault=injection.fault,
        injected_s=round(injection.at - origin, 3),
        lasted_s=round(injection.ended - injection.at, 3),
        recovered_s=None if back is None else round(max(0.0, back - injection.ended), 3),
        requests=len(clients),
        failed=dict(sorted(failed.items())),
        retries=sum(r.retry for r in clients),
        detail=injection.detail,
        error=injection.error,
    )


def status_name(status: int) -> str:
    return "no answer" if status == 0 else str(status)


def succeeded(requests: Iterable[Request], op: str) -> set[str]:
    """The objects that clients saw made (200 with an id) by ``op``: what must be in the ledger."""
    return {r.object_id for r in requests if r.op == op and r.status == 200 and r.object_id}


def keys_answered_twice(requests: Iterable[Request]) -> list[str]:
    """Idempotency keys that got two different objects back: one key that moved money twice."""
    made: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for r in requests:
        if r.status == 200 and r.object_id:
            made[(r.op, r.key)].add(r.object_id)
    return sorted(key for (_, key), ids in made.items() if len(ids) > 1)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def timeline(requests: Iterable[Request], origin: float, step_s: float = 1.0) -> list[dict[str, float]]:
    """Clients' requests (probes apart) per ``step_s`` of answer time: answered, failed, p50 and p99."""
    buckets: defaultdict[int, list[Request]] = defaultdict(list)
    for r in requests:
        if r.source != "probe":
            buckets[int((r.answered - origin) // step_s)].append(r)
    if not buckets:
        return []
    rows = []
    for i in range(min(buckets), max(buckets) + 1):
        got = buckets.get(i, [])
        latencies = [1000 * r.latency_s for r in got]
        rows.append(
            {
                "t": round(i * step_s, 3),
                "ok_per_s": sum(r.ok for r in got) / step_s,
                "failed_per_s": sum(not r.ok for r in got) / step_s,
                "p50_ms": round(quantile(latencies, 0.5), 1),
                "p99_ms": round(quantile(latencies, 0.99), 1),
            }
        )
    return rows
