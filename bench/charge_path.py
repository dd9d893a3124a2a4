"""The charge path against its ceiling: ``POST /v1/charges`` next to a no-op Serve route, in one run.

Starts the stack on the embedded defaults (HAProxy ingress when available), deploys a no-op FastAPI app on
the same Serve instance with the same deployment options, and drives each at fixed concurrency levels from
one aiohttp client: the no-op route, charges with fresh keys, and replays of one settled key. Ratios are
against the no-op route at the same concurrency. At the highest level it also sends half the charges to one
merchant (a hot merchant) and compares with the uniform spread. Prints a table and writes JSON.

    .venv/bin/python -m bench.charge_path [--requests 2000] [--levels 8,32,64] [--proxy default]
"""

# No ``from __future__ import annotations``: FastAPI must see the route's real ``Request`` annotation.
import argparse
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from rich.console import Console
from rich.table import Table

from bench.loadgen import bench_settings, drive
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available

noop_api = FastAPI()


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_api)
class NoopApi:
    """Reads the body and answers a small JSON: what Serve and its ingress cost with no work behind them."""

    @noop_api.post("/noop")
    async def noop(self, request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")


CHARGE = b'{"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}'


def _charges(keys: list[str], replay_key: str | None = None, hot: bool = False) -> Any:
    """Charges spread evenly over the merchants, or (``hot``) every other one on the first merchant."""

    def merchant_key(i: int) -> str:
        if hot and len(keys) > 1:
            return keys[0] if i % 2 == 0 else keys[1 + (i // 2) % (len(keys) - 1)]
        return keys[i % len(keys)]

    def make(i: int) -> tuple[str, str, dict[str, str], bytes]:
        headers = {
            "Authorization": f"Bearer {merchant_key(i)}",
            "Idempotency-Key": replay_key or uuid.uuid4().hex,
            "Content-Type": "application/json",
        }
        return "POST", "/v1/charges", headers, CHARGE

    return make


def _noop(_i: int) -> tuple[str, str, dict[str, str], bytes]:
    return "POST", "/noop/noop", {"Content-Type": "application/json"}, CHARGE


def _merchants(url: str, admin_key: str, count: int) -> list[str]:
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120) as c:
        return [c.post("/v1/merchants", json={"name": f"bench-{i}"}).json()["api_key"] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario and level")
    parser.add_argument("--levels", default="8,32,64", help="concurrency levels, comma-separated")
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--proxy", choices=("haproxy", "default"), default="haproxy")
    parser.add_argument("--json", type=Path, default=Path("bench/out/charge_path.json"))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    haproxy = args.proxy == "haproxy" and haproxy_available()

    home = Path(tempfile.mkdtemp(prefix="payray-bench-"))
    stack = Stack(bench_settings(home), port=free_port(), haproxy=haproxy)
    info = stack.start()
    rows: list[dict[str, Any]] = []
    try:
        noop: Any = NoopApi
        serve.run(noop.bind(), name="noop", route_prefix="/noop", blocking=False)
        url = info.base_url
        keys = _merchants(url, info.admin_key, args.merchants)
        drive(url, _charges(keys), 300, 16)  # warm-up: connections, code paths, wallets
        drive(url, _charges(keys[:1], "bench-replay"), 1, 1)
        for level in levels:
            ceiling = drive(url, _noop, args.requests, level)
            fresh = drive(url, _charges(keys), args.requests, level)
            replay = drive(url, _charges(keys[:1], "bench-replay"), args.requests, level)
            for run in (ceiling, fresh, replay):
                assert set(run.statuses) == {200}, f"unexpected answers: {run.statuses}"
            for scenario, run in (("no-op Serve route", ceiling), ("charge, fresh key", fresh),
                                  ("charge, replay", replay)):  # fmt: skip
                rows.append({"scenario": scenario, "ratio": round(run.per_second / ceiling.per_second, 3),
                             **run.as_dict()})  # fmt: skip
        # Skew at the highest level: half the charges on one merchant, whose wallet serializes them.
        uniform = fresh
        hot = drive(url, _charges(keys, hot=True), args.requests, levels[-1])
        rows.append({"scenario": "charge, half on one merchant",
                     "ratio": round(hot.per_second / ceiling.per_second, 3), **hot.as_dict()})  # fmt: skip
        hot_vs_uniform = round(hot.per_second / uniform.per_second, 3)
    finally:
        stack.stop()

    ingress = "HAProxy" if haproxy else "Serve proxy"
    table = Table(title=f"POST /v1/charges vs the no-op Serve ceiling ({ingress}, loopback, same run)")
    columns = ("concurrency", "scenario", "req/s", "of ceiling", "p50 ms", "p95 ms", "p99 ms", "client CPU")
    for column in (*columns, "statuses"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["concurrency"]), row["scenario"], f"{row['per_second']:.0f}", f"{row['ratio']:.2f}",
            f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", f"{row['p99_ms']:.1f}",
            f"{100 * row['client_cpu_share']:.0f} %", json.dumps(row["statuses"]),
        )  # fmt: skip
    Console(width=160).print(table)
    Console(width=160).print(f"half the charges on one merchant: {hot_vs_uniform:.2f} of the uniform rate")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"ingress": ingress, "rows": rows, "hot_vs_uniform": hot_vs_uniform}
    args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
