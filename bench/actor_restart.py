"""What losing a wallet host's process costs, and how much of it is Ray's: a SIGKILLed actor timed until it
answers again, for a bare actor with the wallet hosts' options (the baseline) and for a wallet host, in one
run on a quiet machine.

Ray restarts an actor in a new worker process (or an idle one it already has); the wallet host adds its
imports and its ``__init__`` (a connection pool, opened on first use). Prints a table and writes JSON.

    .venv/bin/python -m bench.actor_restart [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from ops.embedded import EmbeddedPostgres


def _pid(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda _self: os.getpid())))


def _restarts(actor: Any, kills: int) -> list[float]:
    """Seconds from each SIGKILL to the actor's next answer."""
    seconds = []
    for _ in range(kills):
        os.kill(_pid(actor), signal.SIGKILL)
        started = time.perf_counter()
        _pid(actor)
        seconds.append(time.perf_counter() - started)
        time.sleep(0.5)  # let Ray settle, as between two faults
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="kills per actor (default 5)")
    parser.add_argument("--json", type=Path, default=Path("bench/out/actor_restart.json"))
    args = parser.parse_args()

    from actors.wallet_host import HOST_OPTIONS, WalletHostActor
    from ledger.migrate import migrate

    postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="payray-bench-")) / "postgres")
    database_url = postgres.start()
    migrate(database_url)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(**HOST_OPTIONS)
        class Bare:
            """Nothing to import or open: what Ray's restart costs alone."""

        bare: Any = Bare
        makers: dict[str, Callable[[], Any]] = {
            "bare actor (baseline)": bare.remote,
            "wallet host": lambda: WalletHostActor.remote(database_url, 0, 1000, 600.0),
        }
        rows: list[dict[str, Any]] = []
        for name, make in makers.items():
            actor = make()
            _pid(actor)
            seconds = _restarts(actor, args.kills)
            rows.append({"actor": name, "seconds": [round(s, 3) for s in seconds],
                         "median_s": round(statistics.median(seconds), 3)})  # fmt: skip
        for row in rows:
            row["ratio"] = round(row["median_s"] / rows[0]["median_s"], 2)
    finally:
        ray.shutdown()
        postgres.stop()

    table = Table(title="A SIGKILLed actor until it answers again (quiet machine, one node)")
    for column in ("actor", "median s", "of bare", "each kill, s"):
        table.add_column(column)
    for row in rows:
        each = ", ".join(f"{s:.2f}" for s in row["seconds"])
        table.add_row(row["actor"], f"{row['median_s']:.2f}", f"{row['ratio']:.2f}", each)
    Console(width=140).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
