"""``python -m psp.emulator``: serve the emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from psp.emulator.server import READY_PREFIX, EmulatorServer, server_ssl_context
from psp.tls_trust import outbound_ssl_context


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
    parser.add_argument(
        "--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate (with --tls-key)"
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        help="PEM file of CAs that webhooks to an https endpoint trust besides the defaults",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    problem = _tls_problem(args.tls_cert, args.tls_key, args.ca_bundle)
    if problem:
        parser.error(problem)
    return args


def _tls_problem(cert: Path | None, key: Path | None, ca_bundle: Path | None) -> str | None:
    """Why the certificate, its key or the CA bundle cannot be used (checked before anything starts)."""
    try:
        if cert is not None and key is not None:
            server_ssl_context(cert, key)
    except OSError as exc:
        return f"--tls-cert/--tls-key: {exc}"
    try:
        if ca_bundle is not None:
            outbound_ssl_context(str(ca_bundle))
    except OSError as exc:
        return f"--ca-bundle: {exc}"
    return None


async def serve(args: argparse.Namespace) -> None:
    server = EmulatorServer(
        args.data_dir, args.host, args.port, args.api_key, args.tls_cert, args.tls_key, args.ca_bundle
    )
    async with server:
        print(f"{READY_PREFIX}{server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


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
