"""The fault catalogue and the schedule: which faults, in what order, when. Pure: a seed gives the schedule.

Each fault gets a slot of the run. It is injected at a seeded point early in its slot, lasts its own time
(an instant for a kill, seconds for an outage), and leaves the rest of the slot to recover in, so the
effects of two faults never overlap and each recovery can be timed on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    #: what it breaks, in a line (``payray chaos --help`` lists them)
    does: str
    #: how long it lasts before it is lifted; 0: an instant (a kill), or as long as its action takes
    lasts_s: float = 0.0
    #: slots it takes: a lost node's actors restart elsewhere and its replacement joins, which takes longer
    slots: int = 1


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault(
            "node-lost", "a worker node's raylet killed with every process on it; a new node joins", slots=2
        ),
        Fault("replica-killed", "one Serve replica of the API killed"),
        Fault("ledger-writer-killed", "a wallet host's process killed while its ledger writer holds a batch"),
        Fault("wallet-host-killed", "a wallet host actor killed (Ray restarts it)"),
        Fault("redis-flushall", "every key in Redis deleted (FLUSHALL)"),
        Fault("redis-restart", "Redis killed and started again, empty"),
        Fault("postgres-restart", "Postgres stopped at once (crash recovery) and started again"),
        Fault("psp-timeouts", "30 % of PSP captures succeed but their answer never comes", lasts_s=6.0),
        Fault("psp-outage", "every PSP call's connection reset", lasts_s=4.0),
        Fault("webhook-chaos", "PSP webhooks duplicated, reordered and dropped", lasts_s=6.0),
        Fault("retry-storm", "clients send each of their charges many times at once with the same key"),
        Fault("hot-merchant", "one merchant's backend sends a burst of charges at once"),
    )
}


@dataclass(frozen=True)
class Planned:
    fault: str
    #: seconds after the load starts
    at_s: float


def parse_faults(text: str) -> list[str]:
    """``all`` or a comma-separated list of fault names, in the order given, each once."""
    names = list(FAULTS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown or not names:
        raise ValueError(f"unknown fault(s) {unknown or text!r}; choose from: all, {', '.join(FAULTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a fault is named twice in {text!r}")
    return names


def schedule(faults: list[str], seed: int, slot_s: float, warmup_s: float, rounds: int = 1) -> list[Planned]:
    """Every fault once per round, in an order the seed shuffles, its slots after ``warmup_s``.

    A fault comes within the first fifth of its first slot (the seed says where) and must end, with its
    recovery, before its last slot does.
    """
    if slot_s <= max(FAULTS[f].lasts_s for f in faults) + 2:
        raise ValueError(f"a slot of {slot_s:g} s leaves no time to recover from the longest fault")
    rng = random.Random(seed)
    order = [name for _ in range(rounds) for name in rng.sample(faults, len(faults))]
    planned, start = [], warmup_s
    for name in order:
        planned.append(Planned(name, round(start + rng.uniform(0, slot_s / 5), 3)))
        start += FAULTS[name].slots * slot_s
    return planned


def run_time_s(faults: list[str], slot_s: float, warmup_s: float, rounds: int = 1) -> float:
    """The load's length: the warm-up, then every fault's slots, each round."""
    return warmup_s + rounds * slot_s * sum(FAULTS[f].slots for f in faults)
