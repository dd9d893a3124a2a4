"""Nightly reconciliation at a million rows a day: time, peak memory of the Python side, cost per row.

For each size (100k, 300k and 1M charges by default, each on its own recent UTC day, every 10th charge half
refunded) the same synthetic day is seeded straight into payray's ledger (payments and refunds by ``COPY``,
their postings through ``ledger_post_batch``) and into the PSP emulator's store. Then each day is reconciled
once, in a fresh child process whose peak RSS is the Python side's: the report run at the emulator, the CSV
streamed into ``COPY``, the diff, the review queue and the settlement postings, all as ``payray recon`` does.

Baseline, measured in the same run on the same report: the child streams the report into ``COPY`` of a bare
table and does nothing else, the floor any reconciliation pays to read the PSP's file.

    .venv/bin/python -m bench.reconcile [--sizes 100000,300000,1000000] [--database-url URL] [--keep-seed]

``--database-url`` names a server where the benchmark may create databases (default: an embedded Postgres).
``--keep-seed`` keeps the seeded ledger as a template database and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console
from rich.table import Table

from ledger import store
from ledger.migrate import migrate
from ledger.postings import capture_posting, fee_for, refund_fee_share, refund_posting
from ledger.reconcile import REPORT_COLUMNS, reconcile_day
from ops.embedded import EmbeddedPostgres
from payray.ids import hash_api_key
from payray.money import Money
from psp.emulator.server import EmulatorProcess
from psp.emulator.synthetic import SyntheticCharge, synthetic_day
from psp.stripe_adapter import StripePsp

EMULATOR_KEY = "sk_test_bench"
MERCHANTS = [f"acct_bench{i:02d}" for i in range(16)]
FEE_BPS = 290
POST_BATCH = 2_000
SEED_VERSION = "1"


def _database(server_url: str, name: str) -> str:
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    return make_conninfo("", **params)


# -- seeding the ledger ------------------------------------------------------------------------------------


def _seed_ledger(url: str, day: date, count: int, prefix: str) -> None:
    """Payments and refunds by COPY; their capture and refund postings through the ledger's own function."""
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY payments (id, merchant_id, amount, currency, fee, payment_method, state, idempotency_key, "
            "psp_idempotency_key, psp_reference, ledger_transaction_id) FROM STDIN"
        ) as copy:
            for c in synthetic_day(day, count, prefix):
                merchant = MERCHANTS[c.index % len(MERCHANTS)]
                fee = fee_for(Money(c.amount, c.currency), FEE_BPS).amount
                copy.write_row(
                    (c.payment_id, merchant, c.amount, c.currency, fee, "pm_card_visa", "succeeded",
                     c.payment_id, f"psp:{c.payment_id}", c.payment_intent_id, None)
                )  # fmt: skip
        with cur.copy(
            "COPY refunds (id, merchant_id, payment_id, amount, fee_returned, currency, state, "
            "psp_idempotency_key, psp_reference) FROM STDIN"
        ) as copy:
            for c in synthetic_day(day, count, prefix):
                if c.refund_id is not None:
                    assert c.refund_amount is not None
                    merchant = MERCHANTS[c.index % len(MERCHANTS)]
                    copy.write_row(
                        (_our_refund(c), merchant, c.payment_id, c.refund_amount,
                         _fee_returned(c).amount, c.currency, "succeeded", f"psp:{c.refund_id}", c.refund_id)
                    )  # fmt: skip
    # Two connections, each the only writer of its merchants' balance rows and its own house-account shard.
    threads = [threading.Thread(target=_post_shard, args=(url, day, count, prefix, s)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _our_refund(c: SyntheticCharge) -> str:
    return f"re_ours{c.payment_id[4:]}"


def _fee_returned(c: SyntheticCharge) -> Money:
    assert c.refund_amount is not None
    fee = fee_for(Money(c.amount, c.currency), FEE_BPS)
    return refund_fee_share(fee, c.amount, 0, c.refund_amount)


def _postings(day: date, count: int, prefix: str, shard: int) -> Iterator[dict[str, Any]]:
    for c in synthetic_day(day, count, prefix):
        merchant_index = c.index % len(MERCHANTS)
        if merchant_index % 2 != shard:
            continue
        merchant, money = MERCHANTS[merchant_index], Money(c.amount, c.currency)
        capture = capture_posting(c.payment_id, merchant, money, fee_for(money, FEE_BPS), posting_date=day)
        yield store.posting_document(capture)
        if c.refund_amount is not None:
            refunded = Money(c.refund_amount, c.currency)
            refund = refund_posting(_our_refund(c), merchant, refunded, _fee_returned(c), posting_date=day)
            yield store.posting_document(refund)


def _post_shard(url: str, day: date, count: int, prefix: str, shard: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        batch: list[dict[str, Any]] = []
        for document in _postings(day, count, prefix, shard):
            batch.append(document)
            if len(batch) == POST_BATCH:
                _post(conn, batch, shard)
                batch = []
        if batch:
            _post(conn, batch, shard)


def _post(conn: psycopg.Connection[Any], batch: list[dict[str, Any]], shard: int) -> None:
    results = store.post_documents(conn, batch, shard)
    refused = [r for r in results if not r.ok]
    if refused:
        raise RuntimeError(f"seeding refused {len(refused)} postings, first: {refused[0].error}")


def _prepare_seed(server_url: str, name: str, days: list[tuple[date, int, str]], console: Console) -> None:
    """The seeded ledger as database ``name``, reused when an earlier run left the same seed there."""
    marker = json.dumps([SEED_VERSION, [(d.isoformat(), n, p) for d, n, p in days]])
    url = _database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        with psycopg.connect(url) as conn:
            found = conn.execute("SELECT obj_description('merchants'::regclass)").fetchone()
        if found and found[0] == marker:
            console.print(f"reusing the seeded ledger in database {name}")
            return
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    migrate(url)
    with (
        psycopg.connect(url, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy("COPY merchants (id, name, api_key_hash) FROM STDIN") as copy,
    ):
        for m in MERCHANTS:
            copy.write_row((m, m, hash_api_key(f"sk_bench_{m}")))
    for day, count, prefix in days:
        started = time.perf_counter()
        _seed_ledger(url, day, count, prefix)
        console.print(
            f"seeded the ledger with {count:,} charges on {day} in {time.perf_counter() - started:.0f} s"
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute(f"COMMENT ON TABLE merchants IS '{marker}'")


def _clone(server_url: str, template: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    return _database(server_url, name)


def _drop(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the measured child ------------------------------------------------------------------------------------


class _TimedReport:
    """The PSP's report, noting when its first bytes arrived (the emulator's build time is before that)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.started = time.perf_counter()
        self.first_byte_s: float | None = None
        self.bytes = 0

    @property
    def reference(self) -> str | None:
        reference: str | None = self.inner.reference
        return reference

    async def chunks(self) -> Any:
        async for chunk in self.inner.chunks():
            if self.first_byte_s is None:
                self.first_byte_s = time.perf_counter() - self.started
            self.bytes += len(chunk)
            yield chunk


async def _child(database_url: str, psp_base: str, day: date, mode: str) -> dict[str, Any]:
    psp = StripePsp(EMULATOR_KEY, psp_base)
    report = _TimedReport(psp.settlement_report(day, REPORT_COLUMNS))
    started = time.perf_counter()
    outcome: dict[str, Any] = {}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        if mode == "full":
            result = await reconcile_day(conn, day, report)
            assert result.status == "succeeded", result.error
            outcome = {
                "psp_rows": result.psp_rows,
                "matched": result.matched,
                "discrepancies": sum(result.discrepancies.values()),
                "phases": result.phases,
            }
        else:
            async with conn.transaction(force_rollback=True):
                columns = ", ".join(f"{c} text" for c in REPORT_COLUMNS)
                await conn.execute(f"CREATE TEMP TABLE bare ({columns})")
                async with (
                    conn.cursor() as cur,
                    cur.copy("COPY bare FROM STDIN (FORMAT csv, HEADER)") as copy,
                ):
                    async for chunk in report.chunks():
                        await copy.write(chunk)
    await psp.aclose()
    return {
        **outcome,
        "seconds": time.perf_counter() - started,
        "report_ready_s": report.first_byte_s,
        "report_mb": report.bytes / 1e6,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _measure(database_url: str, psp_base: str, day: date, mode: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.reconcile", "--child", mode, "--child-database-url", database_url,
            "--child-psp", psp_base, "--child-day", day.isoformat()]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {mode} child failed:\n{done.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


# -- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000", help="charges per day, comma-separated")
    parser.add_argument("--database-url", help="a Postgres server where databases may be created")
    parser.add_argument("--keep-seed", action="store_true", help="keep the seeded ledger for the next run")
    parser.add_argument("--json", type=Path, default=Path("bench/out/reconcile.json"))
    parser.add_argument("--child", choices=("full", "copy"), help=argparse.SUPPRESS)
    parser.add_argument("--child-database-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-psp", help=argparse.SUPPRESS)
    parser.add_argument("--child-day", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        day = date.fromisoformat(args.child_day)
        print(json.dumps(asyncio.run(_child(args.child_database_url, args.child_psp, day, args.child))))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=i + 1), n, f"b{i}n{n}") for i, n in enumerate(sizes)]
    console = Console(width=150)
    server = None
    server_url = args.database_url
    if server_url is None:
        server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="payray-bench-recon-")))
        server_url = server.start()
    emulator = EmulatorProcess(None, api_key=EMULATOR_KEY)
    psp_base = emulator.start()
    seed_name = "payray_bench_recon_seed"
    measured: list[dict[str, Any]] = []
    try:
        _prepare_seed(server_url, seed_name, days, console)
        with httpx.Client(base_url=psp_base, timeout=600) as control:
            for day, count, prefix in days:
                started = time.perf_counter()
                body = {"date": day.isoformat(), "charges": count, "prefix": prefix, "refund_every": 10}
                seeded = control.post("/_emulator/settlement/seed", json=body)
                seeded.raise_for_status()
                console.print(
                    f"seeded the emulator with {count:,} charges in {time.perf_counter() - started:.0f} s"
                )
        for day, count, _prefix in days:
            url = _clone(server_url, seed_name, "payray_bench_recon_run")
            try:
                baseline = _measure(url, psp_base, day, "copy")
                full = _measure(url, psp_base, day, "full")
            finally:
                _drop(server_url, "payray_bench_recon_run")
            measured.append({"charges": count, "day": day.isoformat(), "baseline": baseline, "full": full})
            console.print(f"{count:,} charges reconciled")
    finally:
        emulator.stop()
        if not args.keep_seed:
            _drop(server_url, seed_name)
        if server is not None:
            server.stop()
    _report(measured, args.json, console)


def _report(measured: list[dict[str, Any]], out: Path, console: Console) -> None:
    """payray's share of each run excludes the wait for the PSP to build its report (Stripe takes minutes)."""
    for m in measured:
        full, base = m["full"], m["baseline"]
        m["payray_s"] = round(full["seconds"] - full["report_ready_s"], 3)
        m["copy_only_s"] = round(base["seconds"] - base["report_ready_s"], 3)
        m["us_per_row"] = round(m["payray_s"] / full["psp_rows"] * 1e6, 2)
    smallest = measured[0]["us_per_row"]
    table = Table(
        title="Reconciliation of one day: report streamed into Postgres, checked, diffed, queued, settled"
    )
    for column in ("charges", "report rows", "report MB", "PSP builds report s", "COPY only s", "payray s",
                   "vs COPY only", "µs / row", "per row vs smallest", "wall s", "peak RSS MB"):  # fmt: skip
        table.add_column(column, justify="right")
    for m in measured:
        full = m["full"]
        m["payray_vs_copy_only"] = round(m["payray_s"] / m["copy_only_s"], 2)
        m["per_row_vs_smallest"] = round(m["us_per_row"] / smallest, 2)
        table.add_row(
            f"{m['charges']:,}", f"{full['psp_rows']:,}", f"{full['report_mb']:.0f}",
            f"{full['report_ready_s']:.1f}", f"{m['copy_only_s']:.2f}", f"{m['payray_s']:.1f}",
            f"{m['payray_vs_copy_only']:.1f}", f"{m['us_per_row']:.1f}", f"{m['per_row_vs_smallest']:.2f}",
            f"{full['seconds']:.1f}", f"{full['max_rss_mb']:.0f}",
        )  # fmt: skip
    console.print(table)
    phases = Table(title="Where payray's time goes (seconds, before the commit)")
    names = list(measured[-1]["full"]["phases"])
    for column in ("charges", *names):
        phases.add_column(column, justify="right")
    for m in measured:
        phases.add_row(f"{m['charges']:,}", *(f"{m['full']['phases'][n]:.2f}" for n in names))
    console.print(phases)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": measured}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
