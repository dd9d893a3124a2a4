"""The real stack measured at several load levels, as the capacity model's calibration reads them.

Starts the stack on the embedded defaults (HAProxy ingress, one API replica, one wallet host), then for
each level (``clients`` in flight over ``merchants``) drives fresh-key charges in a closed loop and records
charges/s, p50 and p99, the CPU milliseconds per charge of every component (from ``/proc``, as
``bench/cpu_split.py`` reads them) and the wallet host's charges per call. Before the levels, with the stack
at rest, it measures what each component spends a second anyway, and what an actor call to the wallet host
costs the host and its caller. The first level is the one the model is fitted to; ``payray simulate
calibrate`` predicts the others and sets them side by side.

    .venv/bin/python -m bench.calibrate [--levels 2x8,8x8,32x100,64x1] [--requests 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from actors.wallet_host import host_name
from bench.charge_path import _charges, _merchants
from bench.cpu_split import CLIENT, _cpu_by_process
from bench.loadgen import bench_settings, drive
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available
from sim.calibration import Measured

#: cpu_split's component names, as the model names them.
SHORT = {
    "API replica (FastAPI, Stripe SDK, psycopg, redis)": "api",
    "wallet hosts (wallets and their ledger writer)": "host",
    "Postgres": "postgres",
    "PSP emulator": "psp",
    "Redis": "redis",
    "HAProxy": "haproxy",
    "outbox relay and notifier": "relay",
    "recovery sweeper and reconciliation scheduler": "ray",
    "Ray's own actors (controller, proxy, HAProxy manager, agents)": "ray",
    "Ray GCS and raylet": "ray",
    CLIENT: "client",
    "other": "other",
}
DEFAULT_LEVELS = "2x8,8x8,32x100,64x1"
DEFAULT_JSON = Path("bench/out/calibrate.json")


def parse_levels(text: str) -> list[tuple[int, int]]:
    """``8x8,32x100`` → [(8, 8), (32, 100)]: clients in flight x merchants."""
    levels = []
    for part in text.split(","):
        clients, _, merchants = part.strip().partition("x")
        if not (clients.isdigit() and merchants.isdigit()) or not (1 <= int(clients) <= 512):
            raise ValueError(f"a level is CLIENTSxMERCHANTS (1-512 clients), got {part!r}")
        if not 1 <= int(merchants) <= 10_000:
            raise ValueError(f"merchants must be 1 to 10,000, got {part!r}")
        levels.append((int(clients), int(merchants)))
    if len(levels) < 2:
        raise ValueError("give the calibration level and at least one level to predict")
    return levels


Readings = dict[int, tuple[str, float]]


def _by_component(before: Readings, after: Readings) -> dict[str, float]:
    """CPU seconds each component spent between two readings of ``_cpu_by_process``."""
    spent: defaultdict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        spent[SHORT.get(name, "other")] += seconds - before.get(pid, (name, 0.0))[1]
    return dict(spent)


def measure_at_rest(seconds: float = 10.0) -> dict[str, float]:
    """Component -> CPU milliseconds a second with no load: Ray's upkeep, polls, health checks."""
    before = _cpu_by_process()
    time.sleep(seconds)
    spent = _by_component(before, _cpu_by_process())
    return {k: round(1000 * v / seconds, 2) for k, v in sorted(spent.items()) if k != "client"}


def measure_actor_call(namespace: str, calls: int = 400) -> tuple[float, float]:
    """CPU milliseconds of one actor call to a wallet host (``stats``, which does next to nothing): at the
    host, and at the caller (this process, as an API replica calls)."""
    host: Any = ray.get_actor(host_name(0), namespace=namespace)
    ray.get(host.stats.remote())
    before, caller_before = _cpu_by_process(), _own_cpu()
    for _ in range(calls):
        ray.get(host.stats.remote())
    caller = _own_cpu() - caller_before
    spent = _by_component(before, _cpu_by_process())
    return round(1000 * spent.get("host", 0.0) / calls, 3), round(1000 * caller / calls, 3)


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _host_counts(namespace: str) -> tuple[float, float]:
    host: Any = ray.get_actor(host_name(0), namespace=namespace)
    stats: dict[str, Any] = ray.get(host.stats.remote())
    return float(stats["calls"]), float(stats["writer_postings"])


def measure_level(url: str, keys: list[str], namespace: str, clients: int, requests: int) -> Measured:
    cpu_before, host_before = _cpu_by_process(), _host_counts(namespace)
    latencies: list[float] = []
    run = drive(url, _charges(keys), requests, clients, observe=lambda _, seconds: latencies.append(seconds))
    cpu_after, host_after = _cpu_by_process(), _host_counts(namespace)
    if set(run.statuses) != {200}:
        raise RuntimeError(f"unexpected answers: {run.statuses}")
    spent = _by_component(cpu_before, cpu_after)
    calls, postings = host_after[0] - host_before[0], host_after[1] - host_before[1]
    return Measured(
        clients=clients,
        merchants=len(keys),
        per_s=run.per_second,
        p50_ms=run.p50_ms,
        p99_ms=run.p99_ms,
        cpu_ms={k: round(1000 * v / requests, 3) for k, v in sorted(spent.items())},
        mean_batch=round(postings / calls, 2) if calls else 1.0,
        quantiles_ms=_quantiles_ms(latencies),
    )


def _quantiles_ms(latencies: list[float]) -> list[float]:
    """0 %, 5 %, … 100 %, as the capacity model reports them."""
    ordered = sorted(latencies)
    return [round(1000 * ordered[min(len(ordered) - 1, int(i / 20 * len(ordered)))], 2) for i in range(21)]


def measure(levels: list[tuple[int, int]], requests: int) -> list[Measured]:
    settings = bench_settings()
    stack = Stack(settings, port=free_port(), haproxy=haproxy_available())
    info = stack.start()
    try:
        keys = _merchants(info.base_url, info.admin_key, max(m for _, m in levels))
        drive(info.base_url, _charges(keys), 400, 16)  # warm-up: connections, code paths, wallets
        at_rest = measure_at_rest()
        host_call, caller_call = measure_actor_call(settings.ray_namespace)
        return [
            replace(
                measure_level(info.base_url, keys[:merchants], settings.ray_namespace, clients, requests),
                idle_ms_per_s=at_rest,
                host_call_ms=host_call,
                caller_call_ms=caller_call,
            )
            for clients, merchants in levels
        ]
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help="CLIENTSxMERCHANTS, the first fitted")
    parser.add_argument("--requests", type=int, default=3000, help="charges per level")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    try:
        levels = parse_levels(args.levels)
    except ValueError as exc:
        parser.error(str(exc))
    measured = measure(levels, args.requests)
    body: list[dict[str, Any]] = [m.to_json() for m in measured]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(body, indent=2) + "\n")
    for m in measured:
        print(
            f"{m.clients:>4} in flight, {m.merchants:>5} merchants: {m.per_s:7.1f}/s  p50 {m.p50_ms:6.1f} ms"
            f"  p99 {m.p99_ms:6.1f} ms  batch {m.mean_batch:5.2f}  CPU {sum(m.cpu_ms.values()):5.2f} ms"
        )
    first = measured[0]
    print(
        f"at rest: {sum(first.idle_ms_per_s.values()):.0f} ms of CPU a second; an actor call "
        f"{first.host_call_ms:.2f} ms at the host, {first.caller_call_ms:.2f} ms at its caller"
    )
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
