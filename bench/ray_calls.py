"""What one Ray actor call costs here: the unit price of every hop in the charge path.

A charge makes two actor calls (replica → wallet, wallet → ledger writer), each a task submission, a result,
and their serialization. This measures calls per second and CPU seconds per call (all processes) for an
async actor, empty and with a capture ``Posting`` as argument, with and without a nested call to a second
actor — the wallet's shape — at a fixed number in flight. Prints a table and writes JSON.

    .venv/bin/python -m bench.ray_calls [--calls 5000] [--in-flight 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from bench.loadgen import closed_loop
from ledger.postings import Posting, capture_posting
from payray.money import Money


@ray.remote(num_cpus=0)
class Sink:
    async def take(self, item: Any) -> Any:
        return item


@ray.remote(num_cpus=0)
class Relay:
    """Forwards every call to the next actor and answers with its result, as a wallet does to its writer."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink

    async def take(self, item: Any) -> Any:
        return await self._sink.take.remote(item)


def _cpu_all() -> float:
    """CPU seconds used so far by every process on the machine."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def _calls(actor: Any, item: Any, n: int, in_flight: int) -> None:
    async def one(_i: int) -> None:
        await actor.take.remote(item)

    await closed_loop(n, in_flight, one)


def _measure(actor: Any, item: Any, n: int, in_flight: int) -> dict[str, float]:
    asyncio.run(_calls(actor, item, min(n, 500), in_flight))  # warm-up
    cpu, started = _cpu_all(), time.perf_counter()
    asyncio.run(_calls(actor, item, n, in_flight))
    elapsed, cpu = time.perf_counter() - started, _cpu_all() - cpu
    return {"calls_per_s": round(n / elapsed), "cpu_ms_per_call": round(1000 * cpu / n, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("bench/out/ray_calls.json"))
    args = parser.parse_args()

    posting: Posting = capture_posting("ch_bench", "acct_bench", Money(1000, "usd"), Money(30, "usd"))
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        sink = Sink.remote()  # type: ignore[attr-defined]
        relay = Relay.remote(sink)  # type: ignore[attr-defined]
        rows = {
            "one call, empty": _measure(sink, None, args.calls, args.in_flight),
            "one call, a Posting": _measure(sink, posting, args.calls, args.in_flight),
            "call + nested call, a Posting": _measure(relay, posting, args.calls, args.in_flight),
        }
    finally:
        ray.shutdown()
    table = Table(title=f"Ray async actor calls, {args.in_flight} in flight, {args.num_cpus} CPUs")
    for column in ("shape", "calls/s", "CPU ms per call (all processes)"):
        table.add_column(column)
    for shape, row in rows.items():
        table.add_row(shape, str(row["calls_per_s"]), str(row["cpu_ms_per_call"]))
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
