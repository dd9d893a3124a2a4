"""Where a charge's CPU goes: CPU seconds of every process on the machine per charge, by component.

Starts the stack on the embedded defaults, drives fresh-key charges over ``--merchants`` merchants, and reads
each process's user + system time from ``/proc`` before and after. A charge crosses the HAProxy ingress, the
API replica, Redis, Postgres, the PSP emulator and the merchant's wallet host (which writes its ledger
postings); each of those, the outbox relay and notifier, and Ray's own processes gets its share. Linux only.

    .venv/bin/python -m bench.cpu_split [--requests 3000] [--concurrency 32] [--merchants 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.charge_path import _charges, _merchants
from bench.loadgen import bench_settings, drive
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available

#: Command-line fragments that name a component, most specific first.
COMPONENTS = (
    ("ServeReplica", "API replica (FastAPI, Stripe SDK, psycopg, redis)"),
    ("WalletHost", "wallet hosts (wallets and their ledger writer)"),
    ("postgres", "Postgres"),
    ("psp.emulator", "PSP emulator"),
    ("redis", "Redis"),
    ("haproxy", "HAProxy"),
    ("OutboxRelay", "outbox relay and notifier"),
    ("NotificationConsumer", "outbox relay and notifier"),
    ("RecoverySweeper", "recovery sweeper and reconciliation scheduler"),
    ("ReconciliationScheduler", "recovery sweeper and reconciliation scheduler"),
    ("ray::", "Ray's own actors (controller, proxy, HAProxy manager, agents)"),
    ("gcs_server", "Ray GCS and raylet"),
    ("raylet", "Ray GCS and raylet"),
    ("dashboard", "Ray's own actors (controller, proxy, HAProxy manager, agents)"),
)
CLIENT = "load generator (this process)"


def _component(cmdline: str) -> str:
    for fragment, name in COMPONENTS:
        if fragment in cmdline:
            return name
    return "other"


def proc_stats() -> Iterator[tuple[int, list[str], str]]:
    """(pid, the fields of ``/proc/PID/stat`` after the command name, the command line) of every process we
    may read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        yield int(entry), stat.rsplit(")", 1)[1].split(), cmdline


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid → (component, CPU seconds so far) for every process we may read."""
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: (CLIENT if pid == os.getpid() else _component(cmdline), (int(f[11]) + int(f[12])) / tick)
        for pid, f, cmdline in proc_stats()
    }


def measure(url: str, keys: list[str], requests: int, concurrency: int) -> tuple[float, dict[str, float]]:
    """Charges/s and CPU seconds per component over one closed-loop run."""
    before = _cpu_by_process()
    run = drive(url, _charges(keys), requests, concurrency)
    after = _cpu_by_process()
    assert set(run.statuses) == {200}, f"unexpected answers: {run.statuses}"
    spent: defaultdict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        spent[name] += seconds - before.get(pid, (name, 0.0))[1]
    return run.per_second, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--merchants", default="1,8", help="merchant counts to compare, comma-separated")
    parser.add_argument("--json", type=Path, default=Path("bench/out/cpu_split.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.merchants.split(",")]

    stack = Stack(bench_settings(), port=free_port(),
                  haproxy=haproxy_available())  # fmt: skip
    info = stack.start()
    results: dict[int, tuple[float, dict[str, float]]] = {}
    try:
        keys = _merchants(info.base_url, info.admin_key, max(counts))
        drive(info.base_url, _charges(keys), 300, 16)  # warm-up: connections, code paths, wallets
        for count in counts:
            results[count] = measure(info.base_url, keys[:count], args.requests, args.concurrency)
    finally:
        stack.stop()

    per_charge = {
        c: {name: 1000 * seconds / args.requests for name, seconds in spent.items()}
        for c, (_, spent) in results.items()
    }
    table = Table(title=f"CPU ms per charge ({args.requests} charges, {args.concurrency} in flight)")
    table.add_column("component")
    for count in counts:
        table.add_column(f"{count} merchant{'s' if count > 1 else ''}")
    last = per_charge[counts[-1]]
    for name in sorted({n for ms in per_charge.values() for n in ms}, key=lambda n: -last.get(n, 0.0)):
        table.add_row(name, *(f"{per_charge[c].get(name, 0.0):.2f}" for c in counts))
    table.add_row("all processes", *(f"{sum(per_charge[c].values()):.2f}" for c in counts))
    table.add_row("charges/s", *(f"{results[c][0]:.0f}" for c in counts))
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        str(c): {"charges_per_s": results[c][0], "cpu_ms_per_charge": {n: round(v, 3) for n, v in ms.items()}}
        for c, ms in per_charge.items()
    }
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
