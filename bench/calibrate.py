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
import asyncio
import json
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import ray

from actors.wallet_host import host_name
from bench.charge_path import _charges, _merchants
from bench.cpu_split import CLIENT, _cpu_by_process
from bench.loadgen import bench_settings, drive
from ledger.postings import capture_posting, fee_for
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available
from payray.money import Money
from payray.slots import SlotMap
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


#: pid -> (component, CPU seconds so far, times any of its threads slept and woke so far)
Readings = dict[int, tuple[str, float, int]]


def _read() -> Readings:
    readings = _cpu_by_process().items()
    return {pid: (SHORT.get(name, "other"), seconds, _wakes(pid)) for pid, (name, seconds) in readings}


def _wakes(pid: int) -> int:
    """Voluntary context switches of all the process's threads: each is a sleep, and so a wake-up."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _by_component(before: Readings, after: Readings) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds, and wake-ups, of each component between two readings."""
    spent: defaultdict[str, float] = defaultdict(float)
    woken: defaultdict[str, float] = defaultdict(float)
    for pid, (name, seconds, wakes) in after.items():
        _, seconds_before, wakes_before = before.get(pid, (name, 0.0, 0))
        spent[name] += seconds - seconds_before
        woken[name] += wakes - wakes_before
    return dict(spent), dict(woken)


def measure_at_rest(seconds: float = 10.0) -> tuple[dict[str, float], dict[str, float]]:
    """Component -> CPU milliseconds, and wake-ups, a second with no load: Ray's upkeep, polls, health
    checks."""
    before = _read()
    time.sleep(seconds)
    spent, woken = _by_component(before, _read())
    return (
        {k: round(1000 * v / seconds, 2) for k, v in sorted(spent.items()) if k != "client"},
        {k: round(v / seconds, 1) for k, v in sorted(woken.items()) if k != "client"},
    )


@dataclass(frozen=True)
class BatchCosts:
    """CPU milliseconds of a wallet host's batched call, apart (per call) and per posting: at the host, at
    Postgres (the batch's commit), and at the caller."""

    host_call_ms: float
    host_item_ms: float
    commit_ms: float
    commit_item_ms: float
    caller_call_ms: float


def measure_batches(url: str, admin_key: str, namespace: str, hosts: int, calls: int = 150) -> BatchCosts:
    """``calls`` calls of one capture posting each to a merchant's wallet host, then ``calls`` of eight: the
    difference is what a posting costs, the rest what a call costs. The postings are a bench merchant's own
    (the bench's stack is thrown away after)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60) as client:
        merchant_id = client.post("/v1/merchants", json={"name": "calibrate-batches"}).json()["id"]
    host: Any = ray.get_actor(host_name(SlotMap(hosts).host_of(merchant_id)), namespace=namespace)
    amount = Money(1000, "usd")

    def postings(size: int) -> list[Any]:
        return [
            capture_posting(f"ch_calibrate{uuid.uuid4().hex[:16]}", merchant_id, amount, fee_for(amount, 290))
            for _ in range(size)
        ]

    costs = {}
    for size in (1, 1, 8):  # the first round warms up
        before, caller_before = _read(), _own_cpu()
        for _ in range(calls):
            ray.get(host.post_many.remote(postings(size)))
        caller = (_own_cpu() - caller_before) / calls
        spent, _ = _by_component(before, _read())
        costs[size] = (spent.get("host", 0.0) / calls, spent.get("postgres", 0.0) / calls, caller)
    (host_1, pg_1, caller_1), (host_8, pg_8, _) = costs[1], costs[8]
    host_item, pg_item = max(host_8 - host_1, 0.0) / 7, max(pg_8 - pg_1, 0.0) / 7
    return BatchCosts(
        round(1000 * (host_1 - host_item), 3), round(1000 * host_item, 3),
        round(1000 * (pg_1 - pg_item), 3), round(1000 * pg_item, 3), round(1000 * caller_1, 3),
    )  # fmt: skip


def measure_wake_up(messages: int = 4000) -> float:
    """CPU milliseconds an asyncio process spends to wake for one message, beyond handling it: a message at a
    time against 32 at a time, over a socket pair to a child that echoes them."""
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:  # the echo: answers whatever arrives
        ours.close()
        with theirs:
            while data := theirs.recv(65536):
                theirs.sendall(data)
        os._exit(0)
    theirs.close()
    try:
        one, batched = asyncio.run(_echoes(ours, messages))
    finally:
        ours.close()
        os.waitpid(child, 0)
    return round(max(one - batched, 0.0) * 1000, 4)


async def _echoes(sock: socket.socket, messages: int) -> tuple[float, float]:
    """CPU seconds per message sent and answered one at a time, and 32 at a time."""
    reader, writer = await asyncio.open_connection(sock=sock)
    costs = []
    for at_once in (1, 1, 32):  # the first round warms up
        started = _own_cpu()
        for _ in range(messages // at_once):
            writer.write(b"x\n" * at_once)
            await writer.drain()
            for _ in range(at_once):
                await reader.readline()
        costs.append((_own_cpu() - started) / messages)
    writer.close()
    return costs[1], costs[2]


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _host_counts(namespace: str) -> tuple[float, float]:
    host: Any = ray.get_actor(host_name(0), namespace=namespace)
    stats: dict[str, Any] = ray.get(host.stats.remote())
    return float(stats["calls"]), float(stats["writer_postings"])


def measure_level(url: str, keys: list[str], namespace: str, clients: int, requests: int) -> Measured:
    before, host_before = _read(), _host_counts(namespace)
    latencies: list[float] = []
    run = drive(url, _charges(keys), requests, clients, observe=lambda _, seconds: latencies.append(seconds))
    after, host_after = _read(), _host_counts(namespace)
    if set(run.statuses) != {200}:
        raise RuntimeError(f"unexpected answers: {run.statuses}")
    spent, woken = _by_component(before, after)
    calls, postings = host_after[0] - host_before[0], host_after[1] - host_before[1]
    return Measured(
        clients=clients,
        merchants=len(keys),
        per_s=run.per_second,
        p50_ms=run.p50_ms,
        p99_ms=run.p99_ms,
        cpu_ms={k: round(1000 * v / requests, 3) for k, v in sorted(spent.items())},
        wakes={k: round(v / requests, 2) for k, v in sorted(woken.items())},
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
        at_rest, wakes_at_rest = measure_at_rest()
        batches = measure_batches(
            info.base_url, info.admin_key, settings.ray_namespace, settings.wallet_hosts
        )
        wake_ms = measure_wake_up()
        return [
            replace(
                measure_level(info.base_url, keys[:merchants], settings.ray_namespace, clients, requests),
                idle_ms_per_s=at_rest,
                idle_wakes_per_s=wakes_at_rest,
                host_call_ms=batches.host_call_ms,
                host_item_ms=batches.host_item_ms,
                commit_ms=batches.commit_ms,
                commit_item_ms=batches.commit_item_ms,
                caller_call_ms=batches.caller_call_ms,
                wake_ms=wake_ms,
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
        f"at rest: {sum(first.idle_ms_per_s.values()):.0f} ms of CPU a second; a wallet host's call "
        f"{first.host_call_ms:.2f} ms + {first.host_item_ms:.2f} ms a posting at the host, "
        f"{first.commit_ms:.2f} + {first.commit_item_ms:.2f} ms at Postgres, "
        f"{first.caller_call_ms:.2f} ms at its caller; a wake-up {1000 * first.wake_ms:.0f} us"
    )
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
