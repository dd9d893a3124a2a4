"""The capacity model fitted to a measured run of the real stack; its predictions beside measurements.

A measured level (``Measured``) says how many charges a second the stack carried at some concurrency, at
what p50 and p99, and how many milliseconds of CPU each component spent per charge (``bench/cpu_split.py``'s
split, read from ``/proc``). ``machine_for`` lays that CPU along a charge's path as the design routes it
(``Path shares`` below: which part of each component's work the client waits for), and ``fit`` finds the one
share the split cannot tell, the API replica's, from the measured p50. What the stack spends at rest (Ray's
upkeep, polls) is measured with the stack idle and taken out of the per-charge figures, to run beside the
charges whatever the load; what an actor call costs its two ends is measured on the same machine, so a batch
pays it once. Everything else is measured, or a constant of the stack named here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sim.capacity import Batch, Burst, Machine, Outcome, run

#: The parts of the stack the CPU split names, and how many bursts each runs at once: one per Python process
#: (its GIL); HAProxy's threads; Postgres's connections; Ray's many small processes.
COMPONENTS = ("client", "haproxy", "api", "redis", "postgres", "psp", "host", "relay", "ray", "other")
#: A wallet host's actor call, whatever it carries, when not measured (``bench/ray_calls.py``: 1.4-2.0 ms).
HOST_CALL_MS = 1.5
#: The components that run in Ray workers, which Ray starts at nice 15 (its ``worker_niceness``).
RAY_WORKERS = frozenset({"api", "host", "relay"})
#: The components that are Python event loops, which sleep between requests and pay to wake.
EVENT_LOOPS = ("api", "client", "psp", "relay", "host")
#: The most of a component's CPU per charge that waking may explain.
MOST_WAKING = 0.6
#: The most of Postgres's CPU per charge that the batch's commit may take.
MOST_COMMIT = 0.8
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
    #: seconds off CPU on the path that no measured figure explains (wake-ups, hops between processes):
    #: fitted only when all of the API's CPU on the path still leaves the model's p50 short
    unexplained_wait_s: float = 0.0
    #: how much a burst's CPU varies (``Machine.variability``): fitted to the measured p99
    variability: float = 1.0


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
    #: component -> CPU milliseconds a second with the stack at rest (included in ``cpu_ms``)
    idle_ms_per_s: Mapping[str, float] = field(default_factory=dict)
    #: a wallet host's batched call: its CPU at the host (per call, and per posting: 0 is unmeasured), at
    #: Postgres for the batch's commit (likewise), and at its caller (the API replica)
    host_call_ms: float = HOST_CALL_MS
    caller_call_ms: float = 0.0
    host_item_ms: float = 0.0
    commit_ms: float = 0.0
    commit_item_ms: float = 0.0
    #: latency at 0 %, 5 %, … 100 % of the charges, in milliseconds (as ``Outcome.quantiles_ms``)
    quantiles_ms: Sequence[float] = ()
    #: component -> times its threads slept and woke, per charge; and a second at rest
    wakes: Mapping[str, float] = field(default_factory=dict)
    idle_wakes_per_s: Mapping[str, float] = field(default_factory=dict)
    #: CPU milliseconds a Python process spends to wake for a message (``bench/calibrate.py``)
    wake_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "merchants": self.merchants, "per_s": self.per_s,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "cpu_ms": dict(self.cpu_ms),
            "mean_batch": self.mean_batch, "cores": self.cores, "replicas": self.replicas,
            "wallet_hosts": self.wallet_hosts, "psp_latency_ms": self.psp_latency_ms,
            "idle_ms_per_s": dict(self.idle_ms_per_s), "host_call_ms": self.host_call_ms,
            "caller_call_ms": self.caller_call_ms, "quantiles_ms": list(self.quantiles_ms),
            "wakes": dict(self.wakes), "idle_wakes_per_s": dict(self.idle_wakes_per_s),
            "wake_ms": self.wake_ms, "host_item_ms": self.host_item_ms, "commit_ms": self.commit_ms,
            "commit_item_ms": self.commit_item_ms,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measured:
        unknown = (set(data.get("cpu_ms", {})) | set(data.get("idle_ms_per_s", {}))) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components: {', '.join(sorted(unknown))}")
        mappings = ("cpu_ms", "idle_ms_per_s", "wakes", "idle_wakes_per_s")
        ints = ("clients", "merchants", "cores", "replicas", "wallet_hosts")
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name in mappings:
                values[name] = {k: float(v) for k, v in value.items()}
            elif name == "quantiles_ms":
                values[name] = [float(q) for q in value]
            else:
                values[name] = int(value) if name in ints else float(value)
        return cls(**values)

    def wake_s(self, component: str) -> float:
        """CPU seconds per charge ``component`` spent waking for it (beyond its wake-ups at rest)."""
        at_rest = self.idle_wakes_per_s.get(component, 0.0) / self.per_s if self.per_s > 0 else 0.0
        return max(self.wakes.get(component, 0.0) - at_rest, 0.0) * self.wake_ms / 1000

    def per_charge_s(self, component: str) -> float:
        """CPU seconds per charge of ``component`` beyond what it spends at rest."""
        at_rest = self.idle_ms_per_s.get(component, 0.0) / self.per_s if self.per_s > 0 else 0.0
        return max(self.cpu_ms.get(component, 0.0) - at_rest, 0.0) / 1000


def machine_for(m: Measured, shares: Shares = Shares()) -> Machine:
    """The measured CPU laid along a charge's path: client → HAProxy → API (authenticate, claim the key,
    insert the charge) → Redis, Postgres → the PSP → API → the wallet host's batched call and its commit →
    API (the answer) → HAProxy → client. What is not on the path runs beside it once the charge is
    answered; what is spent at rest runs on its own. What the event-loop processes spent waking (at most
    ``MOST_WAKING`` of their CPU) comes off their bursts, to be paid again whenever one finds its process
    asleep."""
    s = {k: m.per_charge_s(k) for k in COMPONENTS}
    waking = {k: min(m.wake_s(k), MOST_WAKING * s[k]) for k in EVENT_LOOPS}
    s.update({k: s[k] - waking[k] for k in EVENT_LOOPS})
    batch_size = max(m.mean_batch, 1.0)
    host_call, caller_call = m.host_call_ms / 1000, m.caller_call_ms / 1000
    api_path = max(s["api"] - caller_call / batch_size, 0.0) * shares.api
    host_item = max(s["host"] - host_call / batch_size, 0.0)
    if m.commit_ms > 0:  # measured: the commit's CPU per batch and per posting, the rest the API's queries
        commit_fixed = min(m.commit_ms / 1000, MOST_COMMIT * s["postgres"] * batch_size)
        commit_item = min(m.commit_item_ms / 1000, MOST_COMMIT * s["postgres"] - commit_fixed / batch_size)
        pg_commit = commit_fixed / batch_size + commit_item
        pg_insert = (s["postgres"] - pg_commit) * shares.postgres_insert / (1 - shares.postgres_commit)
    else:  # half of a commit's CPU is per transaction, half per posting
        pg_insert, pg_commit = s["postgres"] * shares.postgres_insert, s["postgres"] * shares.postgres_commit
        commit_fixed, commit_item = pg_commit * batch_size / 2, pg_commit / 2
    path = (
        Burst("client", s["client"] / 2),
        Burst("haproxy", s["haproxy"] * shares.haproxy / 2),
        Burst("api", api_path / 2),
        Burst("redis", s["redis"]),
        Burst("postgres", pg_insert),
        Burst("psp", s["psp"] * shares.psp, wait_s=m.psp_latency_ms / 1000 + shares.unexplained_wait_s),
        Burst("api", api_path / 4),
        Burst("api", api_path / 4),  # after the wallet host: the answer (batch_at puts the call before it)
        Burst("haproxy", s["haproxy"] * shares.haproxy / 2),
        Burst("client", s["client"] / 2),
    )
    beside = (
        Burst("haproxy", s["haproxy"] * (1 - shares.haproxy)),
        Burst("psp", s["psp"] * (1 - shares.psp)),
        Burst("api", max(s["api"] - caller_call / batch_size, 0.0) - api_path),
        Burst("postgres", s["postgres"] - pg_insert - pg_commit),
        Burst("relay", s["relay"]),
        Burst("ray", s["ray"]),
        Burst("other", s["other"]),
    )
    batch = Batch(
        "host", host_call, host_item, commit=Burst("postgres", commit_fixed, wait_s=FSYNC_S),
        commit_item_s=commit_item, caller=Burst("api", caller_call) if caller_call > 0 else None,
    )  # fmt: skip
    processes = {
        "client": 1, "haproxy": 2, "api": m.replicas, "redis": 1, "postgres": 16, "psp": 1,
        "host": m.wallet_hosts, "relay": 1, "ray": 8, "other": 8,
    }  # fmt: skip
    background = {k: ms / 1000 for k, ms in m.idle_ms_per_s.items() if ms > 0}
    machine = Machine(
        m.cores, processes, path, batch=batch, batch_at=7, beside=beside, background=background,
        variability=shares.variability, niced=RAY_WORKERS,
    )  # fmt: skip
    bursts = machine.bursts_per_charge()
    wake = {k: cost / bursts[k] for k, cost in waking.items() if cost > 0 and bursts.get(k)}
    return replace(machine, wake=wake)


@dataclass
class Fit:
    measured: Measured
    shares: Shares
    machine: Machine
    outcome: Outcome

    @property
    def fitted_values(self) -> str:
        s = self.shares
        wait_ms = 1000 * s.unexplained_wait_s
        unexplained = f", {wait_ms:.1f} ms off CPU unexplained" if wait_ms else ""
        return f"the API's path share {s.api:.2f}{unexplained}, variability {s.variability:.2f}"


Runner = Callable[[Machine, int], Outcome]


def _runner(charges: int, seed: int) -> Runner:
    def go(machine: Machine, clients: int) -> Outcome:
        return run(machine, clients, charges=charges, warmup=max(200, charges // 8), seed=seed)

    return go


def fit(m: Measured, charges: int = 2000, seed: int = 1, rounds: int = 8) -> Fit:
    """The model that meets ``m``'s p50 and p99 at ``m``'s concurrency. The p50 fixes the API's path share
    (bisection: more of the API's CPU on the path lengthens every charge) or, if all of it is not enough, the
    wait off CPU that makes up the rest; the p99 fixes how much a burst's CPU varies (the tail: pauses, slow
    paths). Fit at a level whose cores are not yet full (one or two in flight): there the path decides the
    latency; once they are full, the queue does, and the latency says nothing of either."""
    go = _runner(charges, seed)

    def outcome(shares: Shares) -> Outcome:
        return go(machine_for(m, shares), m.clients)

    def middle(variability: float) -> Shares:
        base = replace(Shares(), variability=variability)
        if outcome(replace(base, api=1.0)).p50_ms >= 0.97 * m.p50_ms:
            share = _bisect(lambda x: outcome(replace(base, api=x)).p50_ms, 0.05, 1.0, m.p50_ms, rounds)
            return replace(base, api=share)
        whole, most = replace(base, api=1.0), m.p50_ms / 1000

        def p50_waiting(wait_s: float) -> float:
            return outcome(replace(whole, unexplained_wait_s=wait_s)).p50_ms

        wait = _bisect(p50_waiting, 0.0, most, m.p50_ms, rounds)
        return replace(whole, unexplained_wait_s=wait)

    shares = middle(1.0)
    tail = _bisect(lambda x: outcome(replace(shares, variability=x)).p99_ms, 0.2, 4.0, m.p99_ms, rounds)
    shares = middle(tail)
    machine = machine_for(m, shares)
    return Fit(m, shares, machine, go(machine, m.clients))


def _bisect(p50: Callable[[float], float], low: float, high: float, target: float, rounds: int) -> float:
    """The ``x`` in [low, high] whose ``p50(x)`` (rising with ``x``) comes nearest ``target``."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        middle = (low + high) / 2
        found = p50(middle)
        if best is None or abs(found - target) < best[0]:
            best = (abs(found - target), middle)
        if found < target:
            low = middle
        else:
            high = middle
    assert best is not None
    return best[1]


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
