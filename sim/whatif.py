"""What the calibrated capacity model says of a machine payray does not have: more load, more replicas, more
cores, a slower PSP. Each is the fitted machine with one thing changed, run beside the baseline (the fitted
machine at the heaviest measured level), so the answer is a difference the model measured, not a guess."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sim.capacity import Machine, Outcome, run


@dataclass(frozen=True)
class Question:
    """The knobs of the standard what-ifs (``payray simulate whatif``'s flags)."""

    load: float = 10.0  # times the baseline's charges in flight
    replicas: int = 2  # API replicas
    cores: int = 4  # the machine's cores, for "more replicas on a bigger machine"
    psp_ms: float = 300.0  # added to every PSP call, about a real card network's answer


@dataclass(frozen=True)
class WhatIf:
    name: str
    clients: int
    machine: Machine


@dataclass
class Answer:
    whatif: WhatIf
    outcome: Outcome

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.whatif.name, "clients": self.whatif.clients} | self.outcome.as_dict()


def with_processes(machine: Machine, **count: int) -> Machine:
    return replace(machine, processes={**machine.processes, **count})


def with_psp_wait(machine: Machine, extra_s: float) -> Machine:
    path = tuple(replace(b, wait_s=b.wait_s + extra_s) if b.process == "psp" else b for b in machine.path)
    return replace(machine, path=path)


def standard(machine: Machine, clients: int, q: Question = Question()) -> list[WhatIf]:
    """The baseline and the seed's questions, each one change away from it."""
    more = max(1, round(clients * q.load))
    replicas = with_processes(machine, api=q.replicas)
    return [
        WhatIf(f"baseline: {clients} in flight", clients, machine),
        WhatIf(f"{q.load:g}x the load ({more} in flight)", more, machine),
        WhatIf(f"{q.replicas} API replicas", clients, replicas),
        WhatIf(f"{q.replicas} API replicas on {q.cores} cores", clients, replace(replicas, cores=q.cores)),
        WhatIf(f"{q.load:g}x the load, {q.replicas} replicas, {q.cores} cores", more,
               replace(replicas, cores=q.cores)),
        WhatIf(f"a PSP {q.psp_ms:g} ms slower", clients, with_psp_wait(machine, q.psp_ms / 1000)),
        WhatIf(f"a PSP {q.psp_ms:g} ms slower, {q.load:g}x the load", more,
               with_psp_wait(machine, q.psp_ms / 1000)),
    ]  # fmt: skip


def answer(whatifs: list[WhatIf], charges: int = 4000, seed: int = 1) -> list[Answer]:
    """Each what-if run long enough for its own concurrency to settle (at least ten rounds of its clients)."""
    return [
        Answer(w, run(w.machine, w.clients, charges=max(charges, 10 * w.clients),
                      warmup=max(200, 2 * w.clients), seed=seed))
        for w in whatifs
    ]  # fmt: skip
