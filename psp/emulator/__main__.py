"""``python -m psp.emulator``: serve the emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from psp.emulator.app import build_app
from psp.emulator.server import READY_PREFIX


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="psp-emulator", description="A Stripe-compatible PSP emulator with fault injection."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=12111, help="port to bind; 0 picks a free one (default: 12111)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory of the journal that keeps state across restarts (default: memory only)",
    )
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any sk_test_... key)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    return args


async def serve(args: argparse.Namespace) -> None:
    app = build_app(args.data_dir, api_key=args.api_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"{READY_PREFIX}http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 after a clean stop or ``--help``, 1 if the port cannot be bound, 2 on bad arguments."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"psp-emulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
