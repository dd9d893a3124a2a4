"""The simulator's speed: a million simulated charges with faults, on one core, against SimPy's own floor.

The run is the ``psp_timeouts`` scenario (lost replies and 5xx, retried with the same key, every invariant
checked at the end) at the given number of charges. The baseline, measured in the same run, is bare SimPy:
one process yielding as many empty timeouts as the simulation scheduled events, the most any SimPy model
could do on this machine.

    .venv/bin/python -m bench.simulate [--charges 1000000] [--scenario psp_timeouts]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import simpy
from rich.console import Console
from rich.table import Table

from sim.run import Simulation
from sim.scenarios import ALL


def _bare_simpy(events: int) -> float:
    env = simpy.Environment()

    def ticks() -> Generator[simpy.Event, Any, None]:
        for _ in range(events):
            yield env.timeout(0.001)

    env.process(ticks())
    started = time.process_time()
    env.run()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=1_000_000)
    parser.add_argument("--scenario", default="psp_timeouts", choices=sorted(ALL))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("bench/out/simulate.json"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal says

    simulation = Simulation(ALL[args.scenario].config(args.seed, args.charges), args.scenario)
    started = time.process_time()
    result = simulation.run()
    cpu_s = time.process_time() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    events = next(simulation.env._eid)  # every event SimPy scheduled in the run
    bare_s = _bare_simpy(events)
    measured = {
        "scenario": args.scenario,
        "seed": args.seed,
        "charges": args.charges,
        "ok": result.ok,
        "cpu_s": round(cpu_s, 2),
        "events": events,
        "events_per_charge": round(events / args.charges, 2),
        "events_per_s": round(events / cpu_s),
        "charges_per_s": round(args.charges / cpu_s),
        "bare_simpy_events_per_s": round(events / bare_s),
        "vs_bare_simpy": round(bare_s / cpu_s, 3),
        "peak_rss_mb": peak_mb,
        "sim_time_s": round(result.summary["sim_time_s"], 1),
        "payments": result.summary["payments"],
        "psp_captures": result.summary["psp"]["captures"],
        "retries": result.summary["retries"],
    }
    table = Table(title=f"{args.charges:,} simulated charges ({args.scenario}), one core, CPU seconds")
    columns = ("run", "CPU s", "events", "events/charge", "events/s", "charges/s", "vs bare SimPy",
               "peak RSS", "invariants")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(
        "simulation", f"{cpu_s:.1f}", f"{events:,}", f"{measured['events_per_charge']}",
        f"{measured['events_per_s']:,}", f"{measured['charges_per_s']:,}", f"{measured['vs_bare_simpy']:.3f}",
        f"{peak_mb:,} MB", "hold" if result.ok else "VIOLATED",
    )  # fmt: skip
    table.add_row("bare SimPy, same events", f"{bare_s:.1f}", f"{events:,}", "",
                  f"{measured['bare_simpy_events_per_s']:,}", "", "1.000", "", "")  # fmt: skip
    Console(width=150).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
