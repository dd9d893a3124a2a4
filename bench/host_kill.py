"""A wallet host killed under load: how long clients wait, and whether anything is lost.

Starts the stack on the embedded defaults, drives fresh-key charges over ``--merchants`` merchants at
``--concurrency`` in flight, and kills the wallet host(s) (``ray.kill``, restart allowed) ``--kill-after``
seconds in. Ray restarts a host and retries the calls it had in flight, so every charge should still answer
200. Reported: the charges in flight at the kill and their longest wait, the time from the kill to the first
charge that was sent after it and answered, the longest gap without any answer, the rate before and after,
and the invariants (``GET /v1/admin/invariants``) once the load stops. Prints a table and writes JSON.

    .venv/bin/python -m bench.host_kill [--requests 4000] [--concurrency 32] [--merchants 100]
        [--kill-after 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from rich.console import Console
from rich.table import Table

from actors.wallet_host import host_name
from bench.charge_path import _charges
from bench.loadgen import bench_settings, drive
from bench.merchants import seed_merchants
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds into the load")
    parser.add_argument("--json", type=Path, default=Path("bench/out/host_kill.json"))
    args = parser.parse_args()

    settings = bench_settings()
    stack = Stack(settings, port=free_port(), haproxy=haproxy_available())
    info = stack.start()
    try:
        keys = seed_merchants(info.database_url, args.merchants, "kill")
        drive(info.base_url, _charges(keys), 300, 16)  # warm-up: every wallet loaded, connections open
        started: dict[int, float] = {}
        done: list[tuple[int, float, float]] = []  # (request, sent, answered), monotonic seconds
        make = _charges(keys)

        def sent_at(i: int) -> Any:
            started[i] = time.monotonic()
            return make(i)

        killed_at: list[float] = []

        def kill() -> None:
            time.sleep(args.kill_after)
            killed_at.append(time.monotonic())
            for index in range(settings.wallet_hosts):
                ray.kill(ray.get_actor(host_name(index), namespace=settings.ray_namespace), no_restart=False)

        killer = threading.Thread(target=kill)
        load_started = time.monotonic()
        killer.start()
        run = drive(info.base_url, sent_at, args.requests, args.concurrency,
                    observe=lambda i, s: done.append((i, started[i], started[i] + s)))  # fmt: skip
        killer.join()
        with httpx.Client(base_url=info.base_url, timeout=120) as admin:
            admin.headers["Authorization"] = f"Bearer {info.admin_key}"
            admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
            invariants = admin.get("/v1/admin/invariants").json()
    finally:
        stack.stop()

    if not killed_at:
        raise RuntimeError("the load ended before the kill: raise --requests or lower --kill-after")
    kill_t = killed_at[0]
    in_flight = [(sent, answered) for _, sent, answered in done if sent <= kill_t < answered]
    after = sorted(answered for _, sent, answered in done if sent > kill_t)
    answers = sorted(answered for _, _, answered in done)
    gaps = [b - a for a, b in itertools.pairwise(answers) if b > kill_t]
    before_rate = sum(1 for a in answers if a <= kill_t) / (kill_t - load_started)
    tail = [a for a in answers if a > kill_t + 3]
    after_rate = len(tail) / (answers[-1] - kill_t - 3) if len(tail) > 1 else 0.0
    summary = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "merchants": args.merchants,
        "wallet_hosts_killed": settings.wallet_hosts,
        "statuses": run.statuses,
        "in_flight_at_kill": len(in_flight),
        "longest_wait_in_flight_s": round(max((a - s for s, a in in_flight), default=0.0), 3),
        "first_answer_sent_after_kill_s": round(after[0] - kill_t, 3) if after else None,
        "longest_gap_without_answers_s": round(max(gaps, default=0.0), 3),
        "charges_per_s_before": round(before_rate, 1),
        "charges_per_s_from_3s_after": round(after_rate, 1),
        "invariants_ok": invariants.get("ok"),
    }
    table = Table(title=f"Every wallet host killed {args.kill_after:.0f} s into the load (loopback)")
    table.add_column("measure")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), json.dumps(value))
    Console(width=120).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**summary, "invariants": invariants}, indent=2))


if __name__ == "__main__":
    main()
