"""``payray …``: run the stack, migrate, create merchants, verify the invariants, run the PSP emulator."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import NoReturn

from payray.settings import Settings


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one clear line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="payray", description="Idempotent payments on Ray: API, ledger, PSP emulator.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    up = commands.add_parser("up", help="start the API with its dependencies and run until interrupted")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    up.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray (default 2)")
    up.add_argument(
        "--proxy",
        choices=("auto", "haproxy", "default"),
        default="auto",
        help="Serve ingress: HAProxy (throughput-optimized; 'auto' uses it when available) or Serve's own",
    )

    commands.add_parser("migrate", help="apply pending database migrations")

    merchant = commands.add_parser("merchant", help="manage merchants")
    merchant_commands = merchant.add_subparsers(dest="merchant_command", required=True, parser_class=_Parser)
    create = merchant_commands.add_parser("create", help="create a merchant and print its API key as JSON")
    create.add_argument("name", help="the merchant's display name")

    verify = commands.add_parser(
        "verify", help="check the invariants against a running stack; exit 1 on violation"
    )
    verify.add_argument("--url", help="the API's base URL (default: the stack `payray up` started)")
    verify.add_argument("--admin-key", help="the admin key (default: the one `payray up` stored)")

    emulator = commands.add_parser(
        "psp-emulator", help="run the Stripe-compatible PSP emulator", add_help=False
    )
    emulator.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["psp-emulator"]:
        from psp.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"payray: error: {exc}", file=sys.stderr)
        return 2
    handlers = {"up": _up, "migrate": _migrate, "merchant": _merchant_create, "verify": _verify}
    return handlers[args.command](settings, args)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from payray.stack import Stack, haproxy_available

    if not 0 < args.port < 65536:
        print(f"payray up: error: --port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if args.proxy == "haproxy" and not haproxy_available():
        print("payray up: error: --proxy haproxy needs HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    use_haproxy = args.proxy == "haproxy" or (args.proxy == "auto" and haproxy_available())
    console = Console()
    stack = Stack(
        settings,
        host=args.host,
        port=args.port,
        num_cpus=args.num_cpus,
        haproxy=use_haproxy,
        say=console.print,
    )
    with console.status("starting Postgres, Redis, the PSP, Ray and the API…"):
        info = stack.start()
    console.print(f"[bold green]payray is up[/] at [bold]{info.base_url}[/]")
    console.print(f"  admin key:         {info.admin_key}")
    console.print(f"  demo merchant:     {info.demo_merchant_id}")
    console.print(f"  demo merchant key: {info.demo_key}")
    ingress = "HAProxy (throughput-optimized)" if use_haproxy else "Serve proxy"
    console.print(f"  ingress:           {ingress}")
    if info.psp_api_base:
        console.print(f"  PSP:               {info.psp_api_base}")
    console.print(
        f"  try: curl -s {info.base_url}/v1/charges -H 'Authorization: Bearer {info.demo_key}' "
        "-H 'Idempotency-Key: demo-1' -d amount=1000 -d currency=usd -d payment_method=pm_card_visa"
    )
    console.print("Ctrl-C stops everything payray started.")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping…"):
            stack.stop()
    console.print("stopped.")
    return 0


def _with_database(settings: Settings) -> tuple[str, object | None]:
    if settings.database_url:
        return settings.database_url, None
    from payray.services import EmbeddedPostgres

    server = EmbeddedPostgres(settings.home.resolve() / "postgres")
    return server.start(), server


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.migrate import migrate

    url, server = _with_database(settings)
    try:
        applied = migrate(url)
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _merchant_create(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from ledger.migrate import migrate
    from payray.ids import hash_api_key, new_api_key, new_id

    name = args.name.strip()
    if not 1 <= len(name) <= 200:
        print("payray merchant create: error: NAME must be 1 to 200 characters", file=sys.stderr)
        return 2
    url, server = _with_database(settings)
    try:
        migrate(url)
        merchant_id, key = new_id("acct", 16), new_api_key()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, %s, %s)",
                (merchant_id, name, hash_api_key(key)),
            )
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    print(json.dumps({"id": merchant_id, "name": name, "api_key": key}))
    return 0


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    stored_path = settings.home / "stack.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else {}
    url = args.url or stored.get("base_url")
    key = args.admin_key or settings.admin_key or stored.get("admin_key")
    if not url or not key:
        print("payray verify: error: no running stack found; pass --url and --admin-key", file=sys.stderr)
        return 2
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/admin/invariants", headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            report = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"payray verify: error: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
