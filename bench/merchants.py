"""Charges over many merchants: rate, latency, CPU, Ray processes and memory from 1 to 10,000 merchants.

One run on a fresh embedded stack (HAProxy ingress when available), every ratio against the no-op Serve
ceiling measured in that same run:

1. the no-op Serve route (``bench.charge_path.NoopApi``), deployed beside the API, then deleted again so it
   does not count in the stack's processes and memory afterwards;
2. fresh-key ``POST /v1/charges`` spread evenly over each merchant count of ``--merchants``; each count gets
   merchants of its own, so every count starts cold;
3. half the charges on one merchant, the other half over the merchants of the largest count;
4. first charge vs second charge: ``--cold`` merchants that never charged, each charged once and then once
   more, a few in flight, so the p50s show what a first charge adds rather than queueing.

Merchants are inserted straight into Postgres (one COPY), as ``payray.stack`` seeds the demo merchant: one
created through the API would have its wallet opened, and its first charge would no longer be a cold one. A
uniform count runs twice. The first pass sends ``max(--requests, count)`` charges round robin, so each of
its merchants is charged at least once and the pass holds exactly ``count`` first charges (at 10,000
merchants and 3,000 requests, every charge of it is a first charge); the warm pass sends as many again to the
same merchants. Both are reported. The warm-up before any of it uses the demo merchant only.

Per scenario: charges/s, ratio to the ceiling, p50/p99, CPU ms per charge by component
(``bench.cpu_split.COMPONENTS``), the Ray worker processes (cmdline ``ray::…``) by actor class, and the
stack's RSS, the last two read right after the scenario. The stack is this process's descendants (Ray, its
workers and HAProxy, the PSP emulator) plus the Postgres postmaster and the Redis server with theirs (found by
asking each for its pid: they detach from the process that starts them); this process (the load generator)
counts for CPU only, and other processes on the machine (another stack, say) for nothing. RSS counts a page
shared between processes (forked Postgres backends, Ray workers) in each of them, as ``ps`` does. Linux only.

A final table checks the targets: ≥ 400 charges/s and ≥ 0.17 of the ceiling at the largest count; the
largest count ≥ 0.9 of the smallest; the hot merchant ≥ 0.8 of the uniform warm pass; first-charge p50 ≤
second-charge p50 + 5 ms; Ray worker processes and stack RSS at the largest count within 10 % of those at
the smallest (both from the warm passes). The run fails, with the status counts, on any answer but 200.

``--cold`` is capped at the largest merchant count, so a small run stays small. ``--hosts`` sets
``PAYRAY_WALLET_HOSTS`` and the settings' host count before the stack starts.

    .venv/bin/python -m bench.merchants [--merchants 1,100,10000] [--requests 3000] [--concurrency 32]
        [--cold 300] [--cold-concurrency 4] [--hosts N] [--json bench/out/merchants.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from ray import serve
from rich.console import Console
from rich.table import Table

from bench.charge_path import NoopApi, _charges, _noop
from bench.cpu_split import CLIENT, _cpu_by_process
from bench.loadgen import Request, Run, drive
from payray.ids import hash_api_key, new_api_key, new_id
from payray.settings import Settings
from payray.stack import Stack, StackInfo, free_port, haproxy_available

PAGE = os.sysconf("SC_PAGE_SIZE")
COPY_MERCHANTS = "COPY merchants (id, name, api_key_hash) FROM STDIN"


@dataclass(frozen=True)
class Process:
    ppid: int
    cmdline: str
    rss_bytes: int


def _processes() -> dict[int, Process]:
    """Every process we may read, by pid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        found[int(entry)] = Process(int(fields[1]), cmdline, int(fields[21]) * PAGE)
    return found


def _tree(processes: dict[int, Process], roots: Iterable[int]) -> set[int]:
    """``roots`` that are alive and all their descendants."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid, process in processes.items():
        children[process.ppid].append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in processes]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children[pid])
    return found


def _stack_roots(info: StackInfo) -> list[int]:
    """This process, the Postgres postmaster (a backend's parent) and the Redis server."""
    roots = [os.getpid()]
    with psycopg.connect(info.database_url, autocommit=True) as conn:  # the backend lives as long as it
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        backend = _processes().get(int(row[0])) if row else None
    if backend is not None:
        roots.append(backend.ppid)
    server = redis.Redis.from_url(info.redis_url)
    try:
        roots.append(int(server.info("server")["process_id"]))
    finally:
        server.close()
    return roots


def _worker_class(cmdline: str) -> str:
    """``ray::WalletActor.credit_many()`` → ``WalletActor``; ``ray::ServeReplica:payray:PaymentApi`` stays."""
    return cmdline.removeprefix("ray::").split(maxsplit=1)[0].split(".", 1)[0] if cmdline != "ray::" else "?"


@dataclass(frozen=True)
class Shape:
    """The stack's processes at one moment."""

    ray_workers: dict[str, int]
    rss_mb: float
    processes: int

    @property
    def ray_worker_count(self) -> int:
        return sum(self.ray_workers.values())


def _shape(processes: dict[int, Process], stack: set[int]) -> Shape:
    workers = Counter(
        _worker_class(processes[pid].cmdline) for pid in stack if processes[pid].cmdline.startswith("ray::")
    )
    rss = sum(processes[pid].rss_bytes for pid in stack)
    return Shape(dict(sorted(workers.items())), round(rss / 2**20, 1), len(stack))


class Probe:
    """Runs a scenario and reads what the stack spent on it and what it looks like after."""

    def __init__(self, url: str, roots: list[int]) -> None:
        self.url = url
        self.roots = roots
        self.ceiling = 0.0
        self.rows: list[dict[str, Any]] = []

    def stack(self) -> tuple[dict[int, Process], set[int]]:
        processes = _processes()
        return processes, _tree(processes, self.roots) - {os.getpid()}

    def run(
        self,
        label: str,
        scenario: str,
        make: Callable[[int], Request],
        n: int,
        concurrency: int,
        merchants: int | None = None,
        first_charges: int = 0,
        ceiling: bool = False,
    ) -> Run:
        before = _cpu_by_process()
        run = drive(self.url, make, n, concurrency)
        after = _cpu_by_process()
        if set(run.statuses) != {200}:
            raise RuntimeError(f"{scenario}: answers other than 200: {run.statuses}")
        processes, stack = self.stack()
        spent: defaultdict[str, float] = defaultdict(float)
        for pid, (name, seconds) in after.items():
            if pid in stack or pid == os.getpid():
                spent[name] += seconds - before.get(pid, (name, 0.0))[1]
        if ceiling:
            self.ceiling = run.per_second
        shape = _shape(processes, stack)
        cpu_ms = {name: round(1000 * seconds / n, 3) for name, seconds in spent.items()}
        self.rows.append({
            "label": label,
            "scenario": scenario,
            "merchants": merchants,
            "first_charges": first_charges,
            "ratio": round(run.per_second / self.ceiling, 3),
            **run.as_dict(),
            "cpu_ms_per_charge": cpu_ms,
            "cpu_ms_per_charge_stack": round(sum(v for k, v in cpu_ms.items() if k != CLIENT), 3),
            "ray_workers": shape.ray_worker_count,
            "ray_workers_by_class": shape.ray_workers,
            "stack_processes": shape.processes,
            "stack_rss_mb": shape.rss_mb,
        })  # fmt: skip
        return run


def seed_merchants(database_url: str, count: int, label: str) -> list[str]:
    """``count`` merchants inserted straight into Postgres: no API call, so no wallet is loaded anywhere.

    Returns their API keys."""
    rows = [(new_id("acct", 16), f"bench-{label}-{i}", new_api_key()) for i in range(count)]
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor().copy(COPY_MERCHANTS) as copy:
        for merchant_id, name, key in rows:
            copy.write_row((merchant_id, name, hash_api_key(key)))
    return [key for _, _, key in rows]


def _ceiling(probe: Probe, concurrency: int, requests: int) -> None:
    """The no-op route, deployed as ``bench.charge_path`` does, measured, then deleted."""
    noop: Any = NoopApi
    serve.run(noop.bind(), name="noop", route_prefix="/noop", blocking=False)
    deadline = time.monotonic() + 120
    while set(drive(probe.url, _noop, 1, 1).statuses) != {200}:  # until the ingress routes to it
        if time.monotonic() > deadline:
            raise RuntimeError("the no-op route did not answer 200 within 120 s")
        time.sleep(0.5)
    drive(probe.url, _noop, 300, concurrency)
    probe.run("no-op", "no-op Serve route (ceiling)", _noop, requests, concurrency, ceiling=True)
    serve.delete("noop")


def _targets(rows: list[dict[str, Any]], counts: list[int]) -> list[dict[str, Any]]:
    """Each target with what was measured for it and whether that meets it."""
    at = {row["label"]: row for row in rows}
    small, large = min(counts), max(counts)
    found: list[dict[str, Any]] = []

    def check(target: str, measured: str, met: bool) -> None:
        found.append({"target": target, "measured": measured, "met": met})

    for pass_ in ("first", "warm"):
        rate, ratio = at[f"{large} {pass_}"]["per_second"], at[f"{large} {pass_}"]["ratio"]
        kept = rate / at[f"{small} {pass_}"]["per_second"]
        check(f"{large:,} merchants, {pass_} pass: ≥ 400 charges/s", f"{rate:.0f}/s", rate >= 400)
        check(f"{large:,} merchants, {pass_} pass: ≥ 0.17 of the ceiling", f"{ratio:.3f}", ratio >= 0.17)
        check(f"{pass_} pass: {large:,} merchants ≥ 0.9 of {small:,}", f"{kept:.2f}", kept >= 0.9)
    if f"hot {large}" in at:
        hot = at[f"hot {large}"]["per_second"] / at[f"{large} warm"]["per_second"]
        check(f"half on one merchant ≥ 0.8 of uniform ({large:,}, warm)", f"{hot:.2f}", hot >= 0.8)
    first, second = at["cold first"]["p50_ms"], at["cold second"]["p50_ms"]
    shown = f"{first:.1f} vs {second:.1f} ms ({first - second:+.1f})"
    check("first-charge p50 ≤ second-charge p50 + 5 ms", shown, first <= second + 5)
    for key, what in (("ray_workers", "Ray worker processes"), ("stack_rss_mb", "stack RSS MB")):
        before, after = at[f"{small} warm"][key], at[f"{large} warm"][key]
        growth = after / before - 1
        shown = f"{before:,.0f} → {after:,.0f} ({growth:+.0%})"
        check(f"{what} at {large:,} merchants within 10 % of {small:,}", shown, abs(growth) <= 0.10)
    return found


def _print(rows: list[dict[str, Any]], targets: list[dict[str, Any]], title: str) -> None:
    console = Console(width=200)
    table = Table(title=title)
    columns = ("scenario", "merchants", "first charges", "requests", "in flight", "charges/s", "of ceiling")
    for column in (*columns, "p50 ms", "p99 ms", "stack CPU ms/req", "client CPU", "Ray workers", "RSS MB"):
        table.add_column(column)
    for row in rows:
        charges = row["merchants"] is not None
        table.add_row(
            row["scenario"], f"{row['merchants']:,}" if charges else "",
            f"{row['first_charges']:,}" if charges else "", f"{row['requests']:,}", str(row["concurrency"]),
            f"{row['per_second']:.0f}", f"{row['ratio']:.3f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
            f"{row['cpu_ms_per_charge_stack']:.2f}", f"{100 * row['client_cpu_share']:.0f} %",
            str(row["ray_workers"]), f"{row['stack_rss_mb']:,.0f}",
        )  # fmt: skip
    console.print(table)

    labels = [row["label"] for row in rows]
    for key, heading, cell in (
        ("cpu_ms_per_charge", "CPU ms per request by component", lambda v: f"{v:.2f}"),
        ("ray_workers_by_class", "Ray worker processes by actor class, after each scenario", str),
    ):
        table = Table(title=heading)
        table.add_column("")
        for label in labels:
            table.add_column(label)
        last = rows[-1][key]
        names = sorted({n for row in rows for n in row[key]}, key=lambda n: (-last.get(n, 0), n))
        for name in names:
            table.add_row(name, *(cell(row[key].get(name, 0)) for row in rows))
        console.print(table)

    table = Table(title="Targets")
    for column in ("target", "measured", "met"):
        table.add_column(column)
    for target in targets:
        table.add_row(target["target"], target["measured"], "met" if target["met"] else "NOT met")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", default="1,100,10000", help="merchant counts, comma-separated")
    parser.add_argument("--requests", type=int, default=3000,
                        help="charges per scenario; a uniform pass sends max(this, merchants)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cold", type=int, default=300,
                        help="merchants for first vs second charge (at most the largest count)")  # fmt: skip
    parser.add_argument("--cold-concurrency", type=int, default=4)
    parser.add_argument("--hosts", type=int, help="wallet hosts (PAYRAY_WALLET_HOSTS)")
    parser.add_argument("--json", type=Path, default=Path("bench/out/merchants.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.merchants.split(",")]
    cold = min(args.cold, max(counts))
    haproxy = haproxy_available()

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="payray-bench-")))
    if args.hosts:
        os.environ["PAYRAY_WALLET_HOSTS"] = str(args.hosts)
        if "wallet_hosts" in {f.name for f in dataclasses.fields(Settings)}:
            settings = settings.with_(wallet_hosts=args.hosts)
    if haproxy:  # HAProxy's stats and metrics ports default to fixed ones: free ones let another stack run
        os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
        os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
    stack = Stack(settings, port=free_port(), haproxy=haproxy)
    info = stack.start()
    try:
        probe = Probe(info.base_url, _stack_roots(info))
        drive(info.base_url, _charges([info.demo_key]), 300, 16)  # warm-up: connections and code paths
        _ceiling(probe, args.concurrency, args.requests)
        largest: list[str] = []
        for count in counts:
            keys = seed_merchants(info.database_url, count, f"uniform{count}")
            n = max(args.requests, count)
            for pass_, first in (("first", count), ("warm", 0)):
                probe.run(f"{count} {pass_}", f"uniform, {pass_} pass", _charges(keys), n, args.concurrency,
                          count, first)  # fmt: skip
            if count == max(counts):
                largest = keys
        if len(largest) > 1:
            probe.run(f"hot {len(largest)}", "half on one merchant, warm", _charges(largest, hot=True),
                      args.requests, args.concurrency, len(largest))  # fmt: skip
        keys = seed_merchants(info.database_url, cold, "cold")
        few = args.cold_concurrency
        probe.run("cold first", "first charge of each", _charges(keys), cold, few, cold, cold)
        probe.run("cold second", "second charge of each", _charges(keys), cold, few, cold)
    finally:
        stack.stop()

    rows = probe.rows
    targets = _targets(rows, counts)
    ingress = "HAProxy" if haproxy else "Serve proxy"
    hosts = getattr(settings, "wallet_hosts", None)
    _print(rows, targets, f"Charges over many merchants ({ingress}, wallet hosts: {hosts}, loopback)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"ingress": ingress, "wallet_hosts": hosts, "counts": counts, "rows": rows, "targets": targets}
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
