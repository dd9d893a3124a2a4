"""The charge path's capacity on the machine it runs on: how many charges a second, at what latency.

The fault simulator (``sim/run.py``) asks whether the invariants hold; this model asks how fast. It is what
``bench/cpu_split.py`` measured, put in motion: every process of the stack spends CPU on each charge, some
on the charge's path (the client waits for it) and some beside it (the PSP's webhook coming back, the outbox
relay, Ray's own upkeep). What the model holds, and the measured stack has:

- **cores**: every process shares the machine's cores; a burst of CPU waits for a free one;
- **one burst at a time per process**: a Python process runs one thing at a time (its GIL), whatever its
  event loop interleaves; Postgres runs one backend per connection, so as many bursts as it has connections;
- **waits off CPU**: the PSP's own latency, a commit's fsync;
- **natural batches**: a wallet host takes what arrived while its call was in flight as its next call, so
  its CPU per charge falls as the load grows (``payray/batching.py``), and one commit carries the batch;
  the caller's side of the actor call is paid once per batch too;
- **wake-ups**: a Python process that sleeps between requests pays to wake for each (its event loop's turn,
  the system calls); under load it finds the next request already waiting and pays less per charge;
- **priorities**: Ray starts its workers (the API replicas, the wallet hosts) at nice 15, so a free core
  goes to Postgres, the PSP, HAProxy or Redis first;
- **work at rest**: what each process spends whatever the load (Ray's health checks and metrics, the outbox
  relay's polls, the ops monitor), which takes cores from the charges; at a low rate it is most of a
  charge's share of the CPU, at a high one little.

A closed loop drives it, as ``bench.loadgen`` drives the stack: ``clients`` each send a charge when their
last one is answered. Seeded, so a run repeats exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import simpy


@dataclass(frozen=True)
class Burst:
    """CPU spent by one process on one charge (``cpu_s`` on average), then ``wait_s`` off CPU."""

    process: str
    cpu_s: float
    wait_s: float = 0.0


@dataclass(frozen=True)
class Batch:
    """A process that carries in one call what arrived while its last call ran (a wallet host): each call
    costs ``call_s`` plus ``item_s`` per charge, then ``commit`` (Postgres's CPU for the batch's commit and
    its fsync wait, ``commit_item_s`` more per charge). ``caller`` is what the call costs the process that
    makes it (sending it, and taking its answer), once per batch."""

    process: str
    call_s: float
    item_s: float
    commit: Burst
    commit_item_s: float = 0.0
    caller: Burst | None = None


@dataclass(frozen=True)
class Machine:
    """The stack on one machine: its cores, its processes (name → bursts it can run at once), a charge's
    path from client to answer (bursts, with the batched step at ``batch_at``), and the work each charge
    sets off beside its path once answered, and what each process spends at rest (``background``: cores,
    whatever the load)."""

    cores: int
    processes: Mapping[str, int]
    path: tuple[Burst, ...]
    batch: Batch | None = None
    batch_at: int = 0
    beside: tuple[Burst, ...] = ()
    #: how much each burst's CPU varies around its mean (the coefficient of variation of a lognormal): 0 is
    #: fixed, 1 as varied as an exponential, more for the long tail of pauses and slow paths
    variability: float = 1.0
    background: Mapping[str, float] = field(default_factory=dict)
    #: processes that run at a lower CPU priority (Ray starts its workers at nice 15): a free core goes to
    #: any other process's burst first
    niced: frozenset[str] = frozenset()
    #: CPU seconds a process spends to wake when a burst finds it asleep (nothing running, nothing queued)
    wake: Mapping[str, float] = field(default_factory=dict)

    def scaled(self, process: str, factor: float) -> Machine:
        """The same machine with ``process`` spending ``factor`` times its CPU (a what-if, or a fit)."""

        def each(burst: Burst) -> Burst:
            return replace(burst, cpu_s=burst.cpu_s * factor) if burst.process == process else burst

        batch = self.batch
        if batch is not None and batch.process == process:
            batch = replace(batch, call_s=batch.call_s * factor, item_s=batch.item_s * factor)
        return replace(
            self, path=tuple(map(each, self.path)), beside=tuple(map(each, self.beside)), batch=batch
        )

    def bursts_per_charge(self) -> dict[str, int]:
        """How many bursts each process runs for a charge, at a batch of one."""
        names = [b.process for b in (*self.path, *self.beside)]
        if self.batch is not None:
            names += [self.batch.process, self.batch.commit.process]
            names += [self.batch.caller.process] if self.batch.caller is not None else []
        return {name: names.count(name) for name in set(names)}

    def cpu_per_charge(self) -> dict[str, float]:
        """Mean CPU seconds per charge by process, at a batch of one."""
        spent: dict[str, float] = {}
        for burst in (*self.path, *self.beside):
            spent[burst.process] = spent.get(burst.process, 0.0) + burst.cpu_s
        if self.batch is not None:
            b = self.batch
            spent[b.process] = spent.get(b.process, 0.0) + b.call_s + b.item_s
            spent[b.commit.process] = spent.get(b.commit.process, 0.0) + b.commit.cpu_s + b.commit_item_s
            if b.caller is not None:
                spent[b.caller.process] = spent.get(b.caller.process, 0.0) + b.caller.cpu_s
        return spent


@dataclass
class Outcome:
    clients: int
    charges: int
    per_s: float
    p50_ms: float
    p99_ms: float
    #: busy share of each process's capacity, and of the cores
    utilisation: dict[str, float] = field(default_factory=dict)
    cores_busy: float = 0.0
    mean_batch: float | None = None
    #: latency at 0 %, 5 %, … 100 % of the charges, in milliseconds
    quantiles_ms: list[float] = field(default_factory=list)

    @property
    def saturated_first(self) -> str:
        """The part that runs out first: the cores, or the process whose capacity is the most used."""
        busiest = max(self.utilisation, key=lambda p: self.utilisation[p]) if self.utilisation else "cores"
        return "cores" if self.cores_busy >= self.utilisation.get(busiest, 0.0) else busiest

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients, "charges": self.charges, "per_s": round(self.per_s, 1),
            "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2),
            "cores_busy": round(self.cores_busy, 3), "saturated_first": self.saturated_first,
            "utilisation": {p: round(u, 3) for p, u in sorted(self.utilisation.items())},
            "mean_batch": None if self.mean_batch is None else round(self.mean_batch, 2),
            "quantiles_ms": [round(q, 2) for q in self.quantiles_ms],
        }  # fmt: skip


#: The slices in which a process spends its CPU at rest (a health check, a poll, a metrics push).
REST_SLICE_S = 0.002


class _Run:
    def __init__(self, machine: Machine, seed: int) -> None:
        self.machine = machine
        self.env = simpy.Environment()
        self.random = random.Random(seed)
        self.cores = simpy.PreemptiveResource(self.env, machine.cores)
        self.processes = {name: simpy.Resource(self.env, n) for name, n in machine.processes.items()}
        self.busy: dict[str, float] = dict.fromkeys(machine.processes, 0.0)
        self.cores_busy = 0.0
        self.waiting: list[simpy.Event] = []
        self.calling = False
        self.batches: list[int] = []

    def _draw(self, mean: float) -> float:
        cv = self.machine.variability
        if mean <= 0 or cv == 0:
            return max(mean, 0.0)
        sigma2 = math.log(1 + cv * cv)
        return self.random.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))

    def burst(self, process: str, cpu_s: float, wait_s: float = 0.0) -> Generator[simpy.Event, Any, None]:
        resource = self.processes[process]
        asleep = resource.count == 0 and not resource.queue
        seconds = self._draw(cpu_s) + (self.machine.wake.get(process, 0.0) if asleep else 0.0)
        with resource.request() as turn:
            yield turn
            yield from self._on_a_core(seconds, niced=process in self.machine.niced)
        self.busy[process] += seconds
        self.cores_busy += seconds
        if wait_s > 0:
            yield self.env.timeout(wait_s)

    def _on_a_core(self, seconds: float, niced: bool) -> Generator[simpy.Event, Any, None]:
        """``seconds`` of CPU. A niced burst gives its core up to any other that wants one (the scheduler
        preempts it) and waits for a core again for what it has left."""
        left = seconds
        while left > 0:
            with self.cores.request(priority=int(niced), preempt=not niced) as core:
                started = None
                try:
                    yield core
                    started = self.env.now
                    yield self.env.timeout(left)
                    left = 0.0
                except simpy.Interrupt:
                    left -= 0.0 if started is None else self.env.now - started

    def batched(self) -> Generator[simpy.Event, Any, None]:
        """Join the next call of the batched process; start it if none is in flight."""
        done = self.env.event()
        self.waiting.append(done)
        if not self.calling:
            self.env.process(self._calls())
        yield done

    def _calls(self) -> Generator[simpy.Event, Any, None]:
        batch = self.machine.batch
        assert batch is not None
        self.calling = True
        while self.waiting:
            riders, self.waiting = self.waiting, []
            self.batches.append(len(riders))
            if batch.caller is not None:
                yield from self.burst(batch.caller.process, batch.caller.cpu_s)
            yield from self.burst(batch.process, batch.call_s + batch.item_s * len(riders))
            commit = batch.commit
            commit_s = commit.cpu_s + batch.commit_item_s * len(riders)
            yield from self.burst(commit.process, commit_s, commit.wait_s)
            for rider in riders:
                rider.succeed()
        self.calling = False

    def charge(self) -> Generator[simpy.Event, Any, None]:
        m = self.machine
        for i, step in enumerate(m.path):
            if m.batch is not None and i == m.batch_at:
                yield from self.batched()
            yield from self.burst(step.process, step.cpu_s, step.wait_s)
        if m.batch is not None and m.batch_at >= len(m.path):
            yield from self.batched()

    def beside(self) -> Generator[simpy.Event, Any, None]:
        for step in self.machine.beside:
            yield from self.burst(step.process, step.cpu_s, step.wait_s)

    def at_rest(self, process: str, cores: float) -> Generator[simpy.Event, Any, None]:
        """``cores`` of ``process``'s CPU whatever the load: slices of ``REST_SLICE_S`` at random times."""
        while True:
            yield self.env.timeout(self.random.expovariate(cores / REST_SLICE_S))
            self.env.process(self.burst(process, REST_SLICE_S))


def run(machine: Machine, clients: int, charges: int = 4000, warmup: int = 500, seed: int = 1) -> Outcome:
    """``clients`` in a closed loop until ``charges`` are answered after ``warmup``; the figures of those."""
    if clients < 1 or charges < 1 or warmup < 0:
        raise ValueError("clients and charges must be positive, warmup not negative")
    sim = _Run(machine, seed)
    latencies: list[float] = []
    answered = 0
    measured_from: dict[str, float] = {}
    done = sim.env.event()

    def client() -> Generator[simpy.Event, Any, None]:
        nonlocal answered
        while not done.triggered:
            sent = sim.env.now
            yield from sim.charge()
            sim.env.process(sim.beside())
            answered += 1
            if answered == warmup:
                measured_from.update(at=sim.env.now, cores=sim.cores_busy, **_prefixed(sim.busy))
                sim.batches.clear()
            elif answered > warmup:
                latencies.append(sim.env.now - sent)
                if len(latencies) == charges and not done.triggered:
                    done.succeed()

    for _ in range(clients):
        sim.env.process(client())
    for process, cores in machine.background.items():
        if cores > 0:
            sim.env.process(sim.at_rest(process, cores))
    sim.env.run(until=done)
    start = measured_from.get("at", 0.0)
    elapsed = sim.env.now - start
    latencies.sort()
    capacity = {name: n for name, n in machine.processes.items()}
    utilisation = {
        name: (sim.busy[name] - measured_from.get(f"busy:{name}", 0.0)) / (elapsed * capacity[name])
        for name in machine.processes
    }
    cores_busy = (sim.cores_busy - measured_from.get("cores", 0.0)) / (elapsed * machine.cores)
    return Outcome(
        clients=clients,
        charges=charges,
        per_s=charges / elapsed,
        p50_ms=1000 * _percentile(latencies, 0.50),
        p99_ms=1000 * _percentile(latencies, 0.99),
        utilisation=utilisation,
        cores_busy=cores_busy,
        mean_batch=sum(sim.batches) / len(sim.batches) if sim.batches else None,
        quantiles_ms=[1000 * _percentile(latencies, i / 20) for i in range(21)],
    )


def _prefixed(busy: Mapping[str, float]) -> dict[str, float]:
    return {f"busy:{name}": seconds for name, seconds in busy.items()}


def _percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
