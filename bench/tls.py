"""What TLS at the edge costs: the no-op Serve route and ``POST /v1/charges`` over plain HTTP, through the TLS
front (HTTPS), and through a front requiring client certificates (mutual TLS), in one run.

Starts the stack on the embedded defaults (HAProxy ingress when available) and a no-op FastAPI app on the
same Serve instance, then puts two TLS fronts (ops/tls_front.py) in front of Serve's port, with certificates
from a local CA made for the run. Each level drives the same requests through the three doors from one
aiohttp client that keeps its connections alive, as merchants' SDKs do; the doors alternate (plain, TLS,
mTLS, then the other way round) so drift over the run touches them alike. Ratios are against plain HTTP at
the same level. One more row opens a connection (a full handshake) per charge, for clients that do not
keep them. Prints a table and writes JSON.

    .venv/bin/python -m bench.tls [--requests 1500] [--levels 8,32]
"""

from __future__ import annotations

import argparse
import json
import ssl
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ray import serve
from rich.console import Console
from rich.table import Table

from bench.charge_path import NoopApi, _charges, _merchants, _noop
from bench.loadgen import Run, bench_settings, drive
from ops.loopback import free_port
from ops.stack import Stack, haproxy_available, haproxy_binary
from ops.tls import Authority
from ops.tls_front import TlsFront

DOORS = ("plain HTTP", "TLS", "mutual TLS")


def _fronts(directory: Path, upstream_port: int, authority: Authority) -> tuple[TlsFront, TlsFront]:
    binary = haproxy_binary()
    assert binary, "the TLS front runs HAProxy: it comes with ray[serve]"
    server = authority.issue(directory, "server", ["127.0.0.1", "localhost"])
    tls = TlsFront(binary, directory / "tls", "127.0.0.1", free_port(), upstream_port, server)
    mutual = TlsFront(
        binary,
        directory / "mtls",
        "127.0.0.1",
        free_port(),
        upstream_port,
        server,
        client_ca=authority.cert_path,
    )
    return tls, mutual


def _contexts(directory: Path, authority: Authority) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trusting = ssl.create_default_context(cafile=str(authority.cert_path))
    with_certificate = ssl.create_default_context(cafile=str(authority.cert_path))
    client = authority.issue(directory, "client", ["bench-client"], server=False, client=True)
    with_certificate.load_cert_chain(client.cert, client.key)
    return trusting, with_certificate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per door, scenario and level")
    parser.add_argument("--levels", default="8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--merchants", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("bench/out/tls.json"))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    home = Path(tempfile.mkdtemp(prefix="payray-bench-"))
    stack = Stack(bench_settings(home), port=free_port(), haproxy=haproxy_available())
    info = stack.start()
    authority = Authority.load_or_create(home / "bench-ca")
    tls_front, mtls_front = _fronts(home / "bench-ca", urlsplit(info.base_url).port or 0, authority)
    trusting, with_certificate = _contexts(home / "bench-ca", authority)
    doors: dict[str, tuple[str, ssl.SSLContext | None]] = {
        "plain HTTP": (info.base_url, None),
        "TLS": (tls_front.start(), trusting),
        "mutual TLS": (mtls_front.start(), with_certificate),
    }
    rows: list[dict[str, Any]] = []
    try:
        noop: Any = NoopApi
        serve.run(noop.bind(), name="noop", route_prefix="/noop", blocking=False)
        keys = _merchants(info.base_url, info.admin_key, args.merchants)
        for url, context in doors.values():  # warm-up: connections, code paths, wallets
            drive(url, _charges(keys), 200, 16, tls=context)
            drive(url, _noop, 200, 16, tls=context)
        for level in levels:
            for scenario, make in (("no-op Serve route", _noop), ("charge, fresh key", _charges(keys))):
                runs = _alternating(doors, make, args.requests, level)
                for door in DOORS:
                    merged = runs[door]
                    ratio = merged["per_second"] / runs["plain HTTP"]["per_second"]
                    rows.append({"scenario": scenario, "door": door, "ratio": round(ratio, 3), **merged})
        level = levels[0]
        url, context = doors["TLS"]
        handshakes = drive(url, _charges(keys), args.requests // 2, level, tls=context, keep_alive=False)
        plain = drive(info.base_url, _charges(keys), args.requests // 2, level, keep_alive=False)
        for door, run in (("plain HTTP", plain), ("TLS", handshakes)):
            _check(run)
            ratio = run.per_second / plain.per_second
            rows.append({"scenario": "charge, a new connection each", "door": door, "ratio": round(ratio, 3),
                         **run.as_dict()})  # fmt: skip
    finally:
        tls_front.stop()
        mtls_front.stop()
        stack.stop()

    ingress = "HAProxy" if haproxy_available() else "Serve proxy"
    table = Table(
        title=f"TLS at the edge: the same requests through three doors ({ingress}, loopback, same run)"
    )
    columns = ("concurrency", "scenario", "door", "req/s", "of plain", "p50 ms", "p99 ms", "client CPU")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["concurrency"]), row["scenario"], row["door"], f"{row['per_second']:.0f}",
            f"{row['ratio']:.2f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
            f"{100 * row['client_cpu_share']:.0f} %",
        )  # fmt: skip
    Console(width=160).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"ingress": ingress, "rows": rows}, indent=2))


def _alternating(
    doors: dict[str, tuple[str, ssl.SSLContext | None]], make: Any, requests: int, level: int
) -> dict[str, dict[str, Any]]:
    """Each door driven twice, in the order plain, TLS, mTLS and then back; the two runs merged."""
    halves: dict[str, list[Run]] = {door: [] for door in DOORS}
    for order in (DOORS, DOORS[::-1]):
        for door in order:
            url, context = doors[door]
            run = drive(url, make, requests // 2, level, tls=context)
            _check(run)
            halves[door].append(run)
    return {door: _merged(runs) for door, runs in halves.items()}


def _merged(runs: list[Run]) -> dict[str, Any]:
    """Two runs as one: requests over seconds; latency quantiles and CPU share averaged."""
    requests, seconds = sum(r.requests for r in runs), sum(r.seconds for r in runs)
    return {
        "concurrency": runs[0].concurrency,
        "requests": requests,
        "seconds": round(seconds, 3),
        "per_second": round(requests / seconds, 1),
        "p50_ms": round(sum(r.p50_ms for r in runs) / len(runs), 1),
        "p99_ms": round(sum(r.p99_ms for r in runs) / len(runs), 1),
        "client_cpu_share": round(sum(r.client_cpu_share * r.seconds for r in runs) / seconds, 3),
        "statuses": {str(k): sum(r.statuses.get(k, 0) for r in runs) for k in runs[0].statuses},
    }


def _check(run: Run) -> None:
    assert set(run.statuses) == {200}, f"unexpected answers: {run.statuses}"


if __name__ == "__main__":
    main()
