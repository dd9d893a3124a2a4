"""The ledger's write path against its baselines, in one run on one Postgres.

1. the writer pool: capture postings sent to the ledger writer actors (group commit, balance rows and the
   balance check maintained), many in flight at once, in two shapes: one actor call per posting, and one
   call per batch of a merchant's postings (``post_many``, as the wallet actors send them);
2. ``ledger_post_batch`` alone: the same work over one connection in batches, without Ray: the database's
   share of the pool's cost;
3. one un-batched commit stream: the same postings, one database transaction each, one after another;
4. plain ``COPY``: the very rows the pool wrote (transactions and entries), into tables shaped like the
   ledger's with the same indexes but no triggers and no balances: the floor of what Postgres must do;
5. single-posting latency through the pool, one posting at a time.

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

from actors.ledger_writer import LedgerWriterActor
from bench.loadgen import closed_loop
from ledger import store
from ledger.migrate import migrate
from ledger.postings import Posting, capture_posting
from ops.embedded import EmbeddedPostgres
from payray.money import Money
from payray.slots import SlotMap

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



def get_or_create_writers(database_url: str, pool_size: int, namespace: str) -> list[Any]:
    """Named, detached ledger writer actors ``bench_ledger_writer:0 …``; writer ``i`` owns shard ``i``."""
    return [
        LedgerWriterActor.options(
            name=f"bench_ledger_writer:{i}", namespace=namespace, get_if_exists=True, lifetime="detached"
        ).remote(database_url, i)
        for i in range(pool_size)
    ]


def writer_for(writers: list[Any], merchant_id: str) -> Any:
    """A merchant's postings always go to the same writer, as they go to the same wallet host."""
    return writers[SlotMap(len(writers)).host_of(merchant_id)]

async def _through_pool(writers: list[Any], postings: list[Posting], window: int, per_call: int) -> float:
    """Seconds to post everything, ``per_call`` postings of one merchant per actor call, at most ``window``
    postings in flight."""
    by_merchant: dict[str, list[Posting]] = {}
    for posting in postings:
        assert posting.merchant_id is not None
        by_merchant.setdefault(posting.merchant_id, []).append(posting)
    calls = [
        (merchant, chunk[i : i + per_call])
        for merchant, chunk in by_merchant.items()
        for i in range(0, len(chunk), per_call)
    ]

    async def post(i: int) -> None:
        merchant, chunk = calls[i]
        writer = writer_for(writers, merchant)
        if per_call == 1:
            results = [await writer.post.remote(chunk[0])]
        else:
            results = await writer.post_many.remote(chunk)
        assert all(result.created for result in results)

    return await closed_loop(len(calls), max(1, window // per_call), post)


def _function_alone(database_url: str, postings: list[Posting], batch: int) -> float:
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = time.perf_counter()
        for i in range(0, len(postings), batch):
            assert all(result.created for result in store.post_batch(conn, postings[i : i + batch], shard=0))
        return time.perf_counter() - started


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


def _mean_batch(before: list[dict[str, float]], after: list[dict[str, float]]) -> float | None:
    batches = sum(a["batches"] - b["batches"] for a, b in zip(after, before, strict=True))
    postings = sum(a["postings"] - b["postings"] for a, b in zip(after, before, strict=True))
    return round(postings / batches, 1) if batches else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postings", type=int, default=20_000)
    parser.add_argument("--unbatched", type=int, default=3_000, help="postings for the un-batched stream")
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--merchants", type=int, default=100)
    parser.add_argument("--window", type=int, default=4_000, help="postings in flight at once")
    parser.add_argument("--per-call", type=int, default=64, help="postings per post_many call")
    parser.add_argument("--sql-batch", type=int, default=500, help="batch size of the function-alone run")
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
        # warm-up: accounts, partitions, plans
        asyncio.run(_through_pool(writers, _postings(1_000, merchants), 1_000, args.per_call))
        seconds: dict[str, float] = {}
        mean_batch: dict[str, float | None] = {}
        pooled: list[Posting] = []
        for label, per_call in (("per_posting", 1), ("per_batch", args.per_call)):
            postings = _postings(args.postings, merchants)
            before: list[dict[str, float]] = ray.get([w.stats.remote() for w in writers])
            seconds[label] = asyncio.run(_through_pool(writers, postings, args.window, per_call))
            mean_batch[label] = _mean_batch(before, ray.get([w.stats.remote() for w in writers]))
            pooled = postings
        alone = _postings(args.postings, merchants)
        seconds["function"] = _function_alone(database_url, alone, args.sql_batch)
        unbatched_s = _unbatched(database_url, _postings(args.unbatched, merchants))
        copy_s = _copy_same_rows(database_url, [p.external_ref for p in pooled])
        latencies = asyncio.run(_latencies(writers, _postings(500, merchants)))
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()

    rates = {label: args.postings / s for label, s in seconds.items()}
    unbatched_rate = args.unbatched / unbatched_s
    copy_rate = args.postings / copy_s
    q = statistics.quantiles(latencies, n=100)
    result = {
        "postings": args.postings,
        "writers": args.writers,
        "per_call": args.per_call,
        "pool_per_posting_postings_per_s": round(rates["per_posting"]),
        "pool_per_batch_postings_per_s": round(rates["per_batch"]),
        "function_alone_postings_per_s": round(rates["function"]),
        "mean_batch": mean_batch,
        "unbatched_postings_per_s": round(unbatched_rate),
        "copy_postings_per_s": round(copy_rate),
        "pool_vs_unbatched": round(rates["per_batch"] / unbatched_rate, 2),
        "pool_vs_copy": round(rates["per_batch"] / copy_rate, 3),
        "single_posting_p50_ms": round(q[49] * 1000, 2),
        "single_posting_p99_ms": round(q[98] * 1000, 2),
    }
    table = Table(title=f"Ledger writes, {args.postings} capture postings (3 entries each), same Postgres")
    for column in ("path", "postings/s", "vs un-batched", "vs COPY"):
        table.add_column(column)
    rows = [
        (f"writer pool ({args.writers} actors), one call per posting, mean batch {mean_batch['per_posting']}",
         rates["per_posting"]),
        (f"writer pool ({args.writers} actors), {args.per_call} postings per call, "
         f"mean batch {mean_batch['per_batch']}", rates["per_batch"]),
        (f"ledger_post_batch alone, one connection, batches of {args.sql_batch}", rates["function"]),
        ("one commit per posting, one stream", unbatched_rate),
        ("plain COPY of the same rows", copy_rate),
    ]  # fmt: skip
    for label, rate in rows:
        table.add_row(label, f"{rate:,.0f}", f"{rate / unbatched_rate:.2f}", f"{rate / copy_rate:.3f}")
    Console(width=160).print(table)
    Console(width=160).print(
        f"single posting through the pool: p50 {result['single_posting_p50_ms']} ms, "
        f"p99 {result['single_posting_p99_ms']} ms"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
