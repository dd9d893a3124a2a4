"""The capacity model fitted to a measured run of the real stack; its predictions beside measurements.

A measured level (``Measured``) says how many charges a second the stack carried at some concurrency, at
what p50 and p99, and how many milliseconds of CPU each component spent per charge (``bench/cpu_split.py``'s
split, read from ``/proc``). ``machine_for`` lays that CPU along a charge's path as the design routes it
(``Path shares`` below: which part of each component's work the client waits for), and ``fit`` finds the one
share the split cannot tell, the API replica's, from the measured p50. Everything else is measured, or a
constant of the stack named here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sim.capacity import Batch, Burst, Machine, Outcome, run

#: The parts of the stack the CPU split names, and how many bursts each runs at once: one per Python process
#: (its GIL); HAProxy's threads; Postgres's connections; Ray's many small processes.
COMPONENTS = ("client", "haproxy", "api", "redis", "postgres", "psp", "host", "relay", "ray", "other")
#: A wallet host's actor call, whatever it carries (``bench/ray_calls.py``: 1.4-2.0 ms here).
HOST_CALL_S = 0.0015
#: A commit's fsync (``pg_test_fsync``: about 10,800 a second on this machine kind).
FSYNC_S = 0.0001


@dataclass(frozen=True)
class Shares:
    """Which share of a component's CPU per charge is on the charge's path (the rest is beside it: the PSP's
    webhook coming back through HAProxy, the API and the emulator; the outbox; Ray's upkeep)."""

    #: HAProxy carries two requests per charge, the charge and its webhook, each in and out
    haproxy: float = 0.5
    #: the emulator's capture, against its webhook delivery
    psp: float = 0.6
    #: Postgres: the charge's insert, against the batch's commit (per charge) and the relay's reads
    postgres_insert: float = 0.4
    postgres_commit: float = 0.4
    #: the API replica: fitted (``fit``)
    api: float = 0.7


@dataclass(frozen=True)
class Measured:
    """A closed-loop run of the real stack: fresh-key charges, ``clients`` in flight, over ``merchants``."""

    clients: int
    merchants: int
    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: Mapping[str, float]  # component -> CPU milliseconds per charge
    mean_batch: float  # charges per wallet-host call
    cores: int = 2
    replicas: int = 1
    wallet_hosts: int = 1
    psp_latency_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "merchants": self.merchants, "per_s": self.per_s,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "cpu_ms": dict(self.cpu_ms),
            "mean_batch": self.mean_batch, "cores": self.cores, "replicas": self.replicas,
            "wallet_hosts": self.wallet_hosts, "psp_latency_ms": self.psp_latency_ms,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measured:
        unknown = set(data.get("cpu_ms", {})) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components in cpu_ms: {', '.join(sorted(unknown))}")
        return cls(
            int(data["clients"]), int(data["merchants"]), float(data["per_s"]), float(data["p50_ms"]),
            float(data["p99_ms"]), {k: float(v) for k, v in data["cpu_ms"].items()},
            float(data["mean_batch"]), int(data.get("cores", 2)), int(data.get("replicas", 1)),
            int(data.get("wallet_hosts", 1)), float(data.get("psp_latency_ms", 0.0)),
        )  # fmt: skip


def machine_for(m: Measured, shares: Shares = Shares()) -> Machine:
    """The measured CPU laid along a charge's path: client → HAProxy → API (authenticate, claim the key,
    insert the charge) → Redis, Postgres → the PSP → API → the wallet host's batched call and its commit →
    API (the answer) → HAProxy → client. What is not on the path runs beside it once the charge is
    answered."""
    s = {k: m.cpu_ms.get(k, 0.0) / 1000 for k in COMPONENTS}
    api_path = s["api"] * shares.api
    pg_insert, pg_commit = s["postgres"] * shares.postgres_insert, s["postgres"] * shares.postgres_commit
    host_item = max(s["host"] - HOST_CALL_S / max(m.mean_batch, 1.0), 0.0)
    commit_fixed = pg_commit * m.mean_batch / 2  # half of a commit's CPU is per transaction, half per posting
    path = (
        Burst("client", s["client"] / 2),
        Burst("haproxy", s["haproxy"] * shares.haproxy / 2),
        Burst("api", api_path / 2),
        Burst("redis", s["redis"]),
        Burst("postgres", pg_insert),
        Burst("psp", s["psp"] * shares.psp, wait_s=m.psp_latency_ms / 1000),
        Burst("api", api_path / 4),
        Burst("api", api_path / 4),  # after the wallet host: the answer (batch_at puts the call before it)
        Burst("haproxy", s["haproxy"] * shares.haproxy / 2),
        Burst("client", s["client"] / 2),
    )
    beside = (
        Burst("haproxy", s["haproxy"] * (1 - shares.haproxy)),
        Burst("psp", s["psp"] * (1 - shares.psp)),
        Burst("api", s["api"] - api_path),
        Burst("postgres", s["postgres"] - pg_insert - pg_commit),
        Burst("relay", s["relay"]),
        Burst("ray", s["ray"]),
        Burst("other", s["other"]),
    )
    batch = Batch(
        "host", HOST_CALL_S, host_item, commit=Burst("postgres", commit_fixed, wait_s=FSYNC_S),
        commit_item_s=pg_commit / 2,
    )  # fmt: skip
    processes = {
        "client": 1, "haproxy": 2, "api": m.replicas, "redis": 1, "postgres": 16, "psp": 1,
        "host": m.wallet_hosts, "relay": 1, "ray": 8, "other": 8,
    }  # fmt: skip
    return Machine(m.cores, processes, path, batch=batch, batch_at=7, beside=beside)


@dataclass
class Fit:
    measured: Measured
    shares: Shares
    machine: Machine
    outcome: Outcome


Runner = Callable[[Machine, int], Outcome]


def _runner(charges: int, seed: int) -> Runner:
    def go(machine: Machine, clients: int) -> Outcome:
        return run(machine, clients, charges=charges, warmup=max(200, charges // 8), seed=seed)

    return go


def fit(m: Measured, charges: int = 2000, seed: int = 1, rounds: int = 8) -> Fit:
    """The API's path share that makes the model's p50 at ``m``'s concurrency the measured one (bisection:
    more of the API's CPU on the path lengthens every charge). Fit at a level whose cores are not yet full
    (one or two in flight): there the path decides the latency; once they are full, the queue does, and the
    latency says nothing of the share."""
    go = _runner(charges, seed)
    low, high = 0.05, 1.0
    best: tuple[float, Shares, Outcome] | None = None
    for _ in range(rounds):
        middle = (low + high) / 2
        shares = replace(Shares(), api=middle)
        outcome = go(machine_for(m, shares), m.clients)
        miss = abs(outcome.p50_ms - m.p50_ms)
        if best is None or miss < best[0]:
            best = (miss, shares, outcome)
        if outcome.p50_ms < m.p50_ms:
            low = middle
        else:
            high = middle
    assert best is not None
    _, shares, outcome = best
    return Fit(m, shares, machine_for(m, shares), outcome)


@dataclass
class Comparison:
    """A level predicted and measured, with the errors (predicted / measured - 1)."""

    clients: int
    merchants: int
    predicted: Outcome
    measured: Measured
    errors: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "merchants": self.merchants, "predicted": self.predicted.as_dict(),
            "measured": self.measured.to_json(),
            "errors": {k: round(v, 4) for k, v in self.errors.items()},
        }  # fmt: skip


#: The targets: predicted within this share of measured.
TARGETS = {"per_s": 0.15, "p50_ms": 0.15, "p99_ms": 0.25}


def compare(fitted: Fit, levels: Sequence[Measured], charges: int = 4000, seed: int = 1) -> list[Comparison]:
    """Each measured level predicted by the fitted model (the calibration's own CPU per charge, the level's
    concurrency) and the errors."""
    go = _runner(charges, seed)
    out = []
    for level in levels:
        predicted = go(fitted.machine, level.clients)
        errors = {k: getattr(predicted, k) / getattr(level, k) - 1 for k in TARGETS if getattr(level, k) > 0}
        out.append(Comparison(level.clients, level.merchants, predicted, level, errors))
    return out


def within_targets(comparisons: Sequence[Comparison]) -> bool:
    return all(abs(c.errors.get(k, 0.0)) <= limit for c in comparisons for k, limit in TARGETS.items())


def measured_split(m: Measured) -> str:
    """The component that spends the most CPU per charge, as measured: what the model's saturation is
    checked against."""
    return max(m.cpu_ms, key=lambda k: m.cpu_ms[k])
