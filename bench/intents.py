"""What a PaymentIntent costs over the charge it makes: POST /v1/payment_intents with confirm=true (automatic
and manual capture) against POST /v1/charges, on one stack, in the same run.

An intent's confirmation inserts the intent and its charge in one transaction, and each charge write that
changes the intent reads the intent first and writes its transition in the same statement; this bench
measures what that adds. Prints a table and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.charge_path import _merchants
from bench.loadgen import Request, bench_settings, drive
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available

CHARGE = b'{"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}'
INTENT = b'{"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": true}'
MANUAL = (
    b'{"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": true,'
    b' "capture_method": "manual"}'
)
SCENARIOS = (
    ("charge (baseline)", "/v1/charges", CHARGE),
    ("intent, confirm=true", "/v1/payment_intents", INTENT),
    ("intent, manual capture (authorize)", "/v1/payment_intents", MANUAL),
)


def _requests(keys: list[str], path: str, body: bytes) -> Any:
    def make(i: int) -> Request:
        headers = {
            "Authorization": f"Bearer {keys[i % len(keys)]}",
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Type": "application/json",
        }
        return "POST", path, headers, body

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per scenario and level")
    parser.add_argument("--levels", default="16,64", help="concurrency levels, comma-separated")
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("bench/out/intents.json"))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    home = Path(tempfile.mkdtemp(prefix="payray-bench-"))
    stack = Stack(bench_settings(home), port=free_port(), haproxy=haproxy_available())
    info = stack.start()
    rows: list[dict[str, Any]] = []
    try:
        url = info.base_url
        keys = _merchants(url, info.admin_key, args.merchants)
        for _, path, body in SCENARIOS:  # warm-up: connections, code paths, wallets
            drive(url, _requests(keys, path, body), 200, 16)
        for level in levels:
            baseline = None
            for scenario, path, body in SCENARIOS:
                run = drive(url, _requests(keys, path, body), args.requests, level)
                assert set(run.statuses) == {200}, f"{scenario}: unexpected answers {run.statuses}"
                baseline = baseline or run
                ratio = round(run.per_second / baseline.per_second, 3)
                rows.append({"scenario": scenario, "ratio": ratio, **run.as_dict()})
    finally:
        stack.stop()

    table = Table(title="POST /v1/payment_intents (confirm=true) vs POST /v1/charges (loopback, same run)")
    for column in ("concurrency", "scenario", "req/s", "of charges", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["concurrency"]), row["scenario"], f"{row['per_second']:.0f}", f"{row['ratio']:.2f}",
            f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", f"{row['p99_ms']:.1f}",
        )  # fmt: skip
    Console(width=140).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
