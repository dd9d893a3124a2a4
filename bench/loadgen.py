"""A closed-loop HTTP load generator on aiohttp: N workers, each sending its next request when one returns.

It reports its own CPU time next to the wall time, so a table can show it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from payray.settings import Settings

#: (method, path, headers, body) for the i-th request.
Request = tuple[str, str, dict[str, str], bytes | None]


@dataclass(frozen=True)
class Run:
    requests: int
    concurrency: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]
    client_cpu_share: float  # of one core, during the run

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def closed_loop(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    """Run ``one(0) … one(n - 1)`` with ``concurrency`` workers, each starting its next when one returns.

    Returns the elapsed seconds.
    """
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _drive(
    base_url: str,
    make: Callable[[int], Request],
    n: int,
    concurrency: int,
    observe: Callable[[int, float], None] | None = None,
    tls: ssl.SSLContext | None = None,
    keep_alive: bool = True,
) -> Run:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(
        limit=concurrency, ssl=tls if tls is not None else True, force_close=not keep_alive
    )
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            method, path, headers, body = make(i)
            started = time.perf_counter()
            async with session.request(method, base_url + path, headers=headers, data=body) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append(time.perf_counter() - started)
            if observe is not None:
                observe(i, latencies[-1])

        cpu_before = _cpu()
        elapsed = await closed_loop(n, concurrency, one)
        cpu = _cpu() - cpu_before
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return Run(
        requests=n,
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        per_second=round(n / elapsed, 1),
        p50_ms=round(q[49] * 1000, 1),
        p95_ms=round(q[94] * 1000, 1),
        p99_ms=round(q[98] * 1000, 1),
        statuses=dict(statuses),
        client_cpu_share=round(cpu / elapsed, 3),
    )


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def drive(
    base_url: str,
    make: Callable[[int], Request],
    n: int,
    concurrency: int,
    observe: Callable[[int, float], None] | None = None,
    tls: ssl.SSLContext | None = None,
    keep_alive: bool = True,
) -> Run:
    """Send ``n`` requests, ``concurrency`` at a time; latencies are per request, end to end (each also
    given to ``observe(i, seconds)``). Over HTTPS, ``tls`` is the client's context (its trust, its
    certificate); connections are kept alive, as merchants' SDKs keep them, unless ``keep_alive`` is off."""
    return asyncio.run(_drive(base_url.rstrip("/"), make, n, concurrency, observe, tls, keep_alive))


def bench_settings(home: Path | None = None) -> Settings:
    """A stack's settings for a bench: per-key rate limits off, since a bench measures what the service can
    carry, not the policy that caps one merchant."""
    return Settings(home=home or Path(tempfile.mkdtemp(prefix="payray-bench-")), key_rate_per_s=0)
