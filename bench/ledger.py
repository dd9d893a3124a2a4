"""The ledger's write path against its baselines, in one run on one Postgres.

1. the writer pool: capture postings sent to the ledger writer actors (group commit, savepoint per posting,
   balance rows and the balance check maintained), many in flight at once;
2. one un-batched commit stream: the same postings, one database transaction each, one after another;
3. plain ``COPY``: the very rows the pool wrote (transactions and entries), into tables shaped like the
   ledger's with the same indexes but no triggers and no balances: the floor of what Postgres must do;
4. single-posting latency through the pool, one posting at a time.

Postgres is the embedded ``pgserver`` (or ``--database-url``); Ray is local with ``--num-cpus``.

    .venv/bin/python -m bench.ledger [--postings 20000] [--writers 2] [--merchants 100]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import ray
from rich.console import Console
from rich.table import Table

from actors.ledger_pool import get_or_create_writers, writer_for
from bench.loadgen import closed_loop
from ledger import store
from ledger.migrate import migrate
from ledger.postings import Posting, capture_posting
from payray.money import Money
from payray.services import EmbeddedPostgres

NAMESPACE = "payray-bench"


def _postings(n: int, merchants: list[str]) -> list[Posting]:
    return [
        capture_posting(
            f"bench_{uuid.uuid4().hex}",
            merchants[i % len(merchants)],
            Money(1000 + i % 997, "usd"),
            Money(30, "usd"),
        )
        for i in range(n)
    ]


async def _through_pool(writers: list[Any], postings: list[Posting], window: int) -> float:
    """Seconds to post everything with at most ``window`` postings in flight."""

    async def post(i: int) -> None:
        posting = postings[i]
        assert posting.merchant_id is not None
        result = await writer_for(writers, posting.merchant_id).post.remote(posting)
        assert result.created

    return await closed_loop(len(postings), window, post)


def _unbatched(database_url: str, postings: list[Posting]) -> float:
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = time.perf_counter()
        for posting in postings:
            (result,) = store.post_batch(conn, [posting], shard=0)
            assert result.ok
        return time.perf_counter() - started


def _copy_same_rows(database_url: str, refs: list[str]) -> float:
    """COPY the pool's rows into look-alike tables without triggers; seconds for the COPY and its commit."""
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_entries, bench_transactions")
        conn.execute("CREATE TABLE bench_transactions (LIKE ledger_transactions INCLUDING ALL)")
        conn.execute(
            "CREATE TABLE bench_entries (LIKE ledger_entries INCLUDING DEFAULTS);"
            "ALTER TABLE bench_entries ADD PRIMARY KEY (id, posting_date);"
            "CREATE INDEX ON bench_entries (transaction_id);"
            "CREATE INDEX ON bench_entries (account_id, posting_date)"
        )
        conn.commit()
        tx_rows, entry_rows = io.BytesIO(), io.BytesIO()
        with conn.cursor().copy(
            "COPY (SELECT * FROM ledger_transactions WHERE external_ref = ANY(%s)) TO STDOUT", (refs,)
        ) as out:
            for chunk in out:
                tx_rows.write(chunk)
        with conn.cursor().copy(
            "COPY (SELECT e.* FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id"
            " WHERE t.external_ref = ANY(%s)) TO STDOUT",
            (refs,),
        ) as out:
            for chunk in out:
                entry_rows.write(chunk)
        conn.commit()
        started = time.perf_counter()
        with conn.cursor().copy("COPY bench_transactions FROM STDIN") as into:
            into.write(tx_rows.getvalue())
        with conn.cursor().copy("COPY bench_entries FROM STDIN") as into:
            into.write(entry_rows.getvalue())
        conn.commit()
        return time.perf_counter() - started


async def _latencies(writers: list[Any], postings: list[Posting]) -> list[float]:
    latencies = []
    for posting in postings:
        assert posting.merchant_id is not None
        started = time.perf_counter()
        await writer_for(writers, posting.merchant_id).post.remote(posting)
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postings", type=int, default=20_000)
    parser.add_argument("--unbatched", type=int, default=3_000, help="postings for the un-batched stream")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--window", type=int, default=4_000, help="postings in flight at once")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--database-url")
    parser.add_argument("--json", type=Path, default=Path("bench/out/ledger.json"))
    args = parser.parse_args()

    server = None
    database_url = args.database_url
    if database_url is None:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="payray-bench-pg-")))
        database_url = server.start()
    migrate(database_url)
    ray.init(num_cpus=args.num_cpus, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        merchants = [f"acct_bench{i:05d}" for i in range(args.merchants)]
        writers = get_or_create_writers(database_url, args.writers, NAMESPACE)
        ray.get([w.ready.remote() for w in writers])
        asyncio.run(_through_pool(writers, _postings(500, merchants), 500))  # warm-up: accounts, partitions
        pooled = _postings(args.postings, merchants)
        pool_s = asyncio.run(_through_pool(writers, pooled, args.window))
        stats: list[dict[str, float]] = ray.get([w.stats.remote() for w in writers])
        unbatched_s = _unbatched(database_url, _postings(args.unbatched, merchants))
        copy_s = _copy_same_rows(database_url, [p.external_ref for p in pooled])
        latencies = asyncio.run(_latencies(writers, _postings(500, merchants)))
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()

    pool_rate = args.postings / pool_s
    unbatched_rate = args.unbatched / unbatched_s
    copy_rate = args.postings / copy_s
    q = statistics.quantiles(latencies, n=100)
    batches = sum(s["batches"] for s in stats)
    result = {
        "postings": args.postings,
        "writers": args.writers,
        "pool_postings_per_s": round(pool_rate),
        "mean_batch": round(sum(s["postings"] for s in stats) / batches, 1) if batches else None,
        "unbatched_postings_per_s": round(unbatched_rate),
        "copy_postings_per_s": round(copy_rate),
        "pool_vs_unbatched": round(pool_rate / unbatched_rate, 2),
        "pool_vs_copy": round(pool_rate / copy_rate, 3),
        "single_posting_p50_ms": round(q[49] * 1000, 2),
        "single_posting_p99_ms": round(q[98] * 1000, 2),
    }
    table = Table(title=f"Ledger writes, {args.postings} capture postings (3 entries each), same Postgres")
    for column in ("path", "postings/s", "vs un-batched", "vs COPY"):
        table.add_column(column)
    table.add_row(f"writer pool ({args.writers} actors, group commit)", str(result["pool_postings_per_s"]),
                  f"{result['pool_vs_unbatched']:.2f}", f"{result['pool_vs_copy']:.3f}")  # fmt: skip
    table.add_row("one commit per posting, one stream", str(result["unbatched_postings_per_s"]), "1.00",
                  f"{unbatched_rate / copy_rate:.3f}")  # fmt: skip
    table.add_row("plain COPY of the same rows", str(result["copy_postings_per_s"]),
                  f"{copy_rate / unbatched_rate:.2f}", "1.000")  # fmt: skip
    Console(width=160).print(table)
    Console(width=160).print(
        f"single posting through the pool: p50 {result['single_posting_p50_ms']} ms, "
        f"p99 {result['single_posting_p99_ms']} ms; mean batch {result['mean_batch']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
