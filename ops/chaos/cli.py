"""``payray chaos``: its options, their checks, and the run from the command line to the exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ops.chaos.plan import FAULTS, parse_faults

MAX_USERS = 200
MAX_ROUNDS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    listed = "; ".join(f"{f.name}: {f.does}" for f in FAULTS.values()).replace("%", "%%")  # argparse formats
    parser.add_argument(
        "--faults", default="all", help=f"'all' (default) or a comma-separated list of: {listed}"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="the seed of the schedule and the faults (default 1)"
    )
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes, 2 to 8 (default 2)")
    parser.add_argument("--users", type=int, default=12, help="Locust users, loopback only (default 12)")
    parser.add_argument("--merchants", type=int, default=8, help="merchants the users charge as (default 8)")
    parser.add_argument(
        "--slot",
        type=float,
        default=20.0,
        help="seconds each fault has to strike and recover in (default 20)",
    )
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds of load before the first fault")
    parser.add_argument("--rounds", type=int, default=1, help="times the whole schedule runs (default 1)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the API and the PSP emulator over HTTPS, Ray's own traffic over mutual TLS",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON to FILE")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write the result as an HTML page to FILE")


def problems(args: argparse.Namespace) -> list[str]:
    from loadtest.options import MAX_MERCHANTS
    from ops.cluster import MAX_NODES

    found = []
    try:
        parse_faults(args.faults)
    except ValueError as exc:
        found.append(str(exc))
    if not 2 <= args.nodes <= MAX_NODES:
        found.append(f"--nodes must be 2..{MAX_NODES}, got {args.nodes}")
    if not 1 <= args.users <= MAX_USERS:
        found.append(f"--users must be 1..{MAX_USERS}, got {args.users}")
    if not 1 <= args.merchants <= MAX_MERCHANTS:
        found.append(f"--merchants must be 1..{MAX_MERCHANTS}, got {args.merchants}")
    if not 8 <= args.slot <= 600:
        found.append(f"--slot must be 8 to 600 seconds, got {args.slot:g}")
    if not 1 <= args.warmup <= 600:
        found.append(f"--warmup must be 1 to 600 seconds, got {args.warmup:g}")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        found.append(f"--rounds must be 1..{MAX_ROUNDS}, got {args.rounds}")
    for path in (args.json, args.html):
        if path is not None and not path.resolve().parent.is_dir():
            found.append(f"{path}: its directory does not exist")
    return found


def main(args: argparse.Namespace) -> int:
    found = problems(args)
    if found:
        print(f"payray chaos: error: {'; '.join(found)}", file=sys.stderr)
        return 2
    from rich.console import Console

    from ops.chaos.report import as_json, html_page, print_table
    from ops.chaos.run import ChaosOptions, run_chaos

    console = Console(width=160)
    options = ChaosOptions(
        faults=parse_faults(args.faults), seed=args.seed, nodes=args.nodes, users=args.users,
        merchants=args.merchants, slot_s=args.slot, warmup_s=args.warmup, rounds=args.rounds, tls=args.tls,
    )  # fmt: skip
    run = run_chaos(options, say=console.print)
    print_table(run, console)
    if args.json:
        args.json.write_text(json.dumps(as_json(run), indent=2))
    if args.html:
        args.html.write_text(html_page(run))
    return 0 if run.passed else 1
