"""Charges per second through the whole stack, and an idempotent replay for comparison.

Starts the stack on the embedded defaults (or uses ``--url`` with ``--admin-key``), creates merchants, then
drives ``POST /v1/charges`` at a fixed concurrency for a fixed number of requests from one asyncio client,
and prints a table and writes JSON. Loopback only; bounded in requests.

    .venv/bin/python -m bench.charge_throughput --charges 2000 --concurrency 32 [--proxy default]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table


async def _drive(
    url: str, keys: list[str], n: int, concurrency: int, replay_key: str | None
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    body = "amount=1000&currency=usd&payment_method=pm_card_visa"

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            key = keys[i % len(keys)]
            headers = {
                "Authorization": f"Bearer {key}",
                "Idempotency-Key": replay_key or uuid.uuid4().hex,
                "Content-Type": "application/x-www-form-urlencoded",
            }
            started = time.perf_counter()
            async with session.post(f"{url}/v1/charges", data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cpu = os.times()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p95_ms": round(quantiles[94] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "statuses": statuses,
        "client_cpu_s": round(cpu.user + cpu.system, 2),
    }


async def _merchants(url: str, admin_key: str, count: int) -> list[str]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        keys = []
        for i in range(count):
            async with session.post(f"{url}/v1/merchants", json={"name": f"bench-{i}"}) as response:
                keys.append((await response.json())["api_key"])
        return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--url")
    parser.add_argument("--admin-key")
    parser.add_argument(
        "--proxy", choices=("haproxy", "default"), default="haproxy", help="ingress of the stack"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/charge_throughput.json"))
    args = parser.parse_args()

    stack = None
    url, admin_key = args.url, args.admin_key
    if url is None:
        from payray.settings import Settings
        from payray.stack import Stack, free_port

        home = Path(tempfile.mkdtemp(prefix="payray-bench-"))
        stack = Stack(Settings(home=home), port=free_port(), haproxy=args.proxy == "haproxy")
        info = stack.start()
        url, admin_key = info.base_url, info.admin_key
    try:
        keys = asyncio.run(_merchants(url, admin_key, args.merchants))
        asyncio.run(_drive(url, keys, min(200, args.charges), args.concurrency, None))  # warm-up
        fresh = asyncio.run(_drive(url, keys, args.charges, args.concurrency, None))
        replay = asyncio.run(_drive(url, keys[:1], args.charges, args.concurrency, "bench-replay"))
    finally:
        if stack is not None:
            stack.stop()
    ingress = args.url or f"{args.proxy} ingress"
    table = Table(title=f"POST /v1/charges, {args.concurrency} concurrent, loopback, {ingress}")
    for column in ("scenario", "requests", "per second", "p50 ms", "p95 ms", "p99 ms", "statuses"):
        table.add_column(column)
    for name, row in (("fresh keys", fresh), ("replay of one key", replay)):
        table.add_row(
            name,
            str(row["requests"]),
            str(row["per_second"]),
            str(row["p50_ms"]),
            str(row["p95_ms"]),
            str(row["p99_ms"]),
            json.dumps(row["statuses"]),
        )
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fresh": fresh, "replay": replay}, indent=2))


if __name__ == "__main__":
    main()
