"""``payray …``: the stack, migrations, merchants, invariants, load tests and the PSP emulator."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from ops import tls_cli
from ops.tls import trust_stack_ca
from payray.settings import Settings, running_stack


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one clear line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    from loadtest.profiles import PROFILES
    from loadtest.shapes import SHAPES

    parser = _Parser(prog="payray", description="Idempotent payments on Ray: API, ledger, PSP emulator.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    up = commands.add_parser("up", help="start the API with its dependencies and run until interrupted")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    up.add_argument("--num-cpus", type=int, default=2, help="CPUs for the local Ray (default 2)")
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="Ray nodes: 1 (default) is one local Ray; N > 1 starts a head and N-1 worker nodes on loopback, "
        "two CPUs each, with token authentication",
    )
    up.add_argument(
        "--proxy",
        choices=("auto", "haproxy", "default"),
        default="auto",
        help="Serve ingress: HAProxy (throughput-optimized; 'auto' uses it when available) or Serve's own",
    )
    tls_cli.add_up_arguments(up)
    tls_cli.add_commands(commands)

    commands.add_parser("migrate", help="apply pending database migrations")

    merchant = commands.add_parser("merchant", help="manage merchants")
    merchant_commands = merchant.add_subparsers(dest="merchant_command", required=True, parser_class=_Parser)
    create = merchant_commands.add_parser("create", help="create a merchant and print its API key as JSON")
    create.add_argument("name", help="the merchant's display name")
    routing = merchant_commands.add_parser(
        "routing",
        help="print a merchant's PSPs in the order its new payments try them, or set them with --psps; JSON",
    )
    routing.add_argument("merchant", help="the merchant's id, acct_…")
    routing.add_argument("--psps", help="comma-separated, first tried first: stripe, braintree")
    _target_arguments(routing)

    verify = commands.add_parser(
        "verify", help="check the invariants against a running stack; exit 1 on violation"
    )
    _target_arguments(verify)

    reconcile = commands.add_parser(
        "recon",
        help="reconcile one UTC day with each PSP's settlement report and print its discrepancies; "
        "exit 1 if the run failed or found any",
    )
    reconcile.add_argument(
        "--date", required=True, type=_utc_day, help="the UTC day YYYY-MM-DD, not after today"
    )
    _target_arguments(reconcile)

    webhooks = commands.add_parser("webhooks", help="webhooks to merchants")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True, parser_class=_Parser)
    resend = webhook_commands.add_parser(
        "resend",
        help="deliver an event again to its merchant's enabled webhook endpoints that take its type, or to "
        "one endpoint; prints the endpoints it goes to as JSON",
    )
    resend.add_argument("event", type=_event_id, help="the event's id, evt_…")
    resend.add_argument("--endpoint", type=_endpoint_id, help="only this endpoint of the merchant, we_…")
    _target_arguments(resend)

    demo = commands.add_parser(
        "demo",
        help="walk through a charge, its retry, a refund via webhook and reconciliation, showing each "
        "request and response; against a running stack, or one it starts and stops",
    )
    _target_arguments(demo)
    demo.add_argument("--psp-url", help="the PSP emulator's URL (default: the one `payray up` started)")

    load = commands.add_parser(
        "loadtest", help="run Locust headless against a running stack, then verify; exit 1 on violation"
    )
    _target_arguments(load)
    load.add_argument("--psp-url", help="the PSP emulator's URL (default: the one `payray up` started)")
    load.add_argument("--users", type=int, default=20, help="peak concurrent users (default 20)")
    load.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second (default 10)")
    load.add_argument("--run-time", default="60s", help="how long: 60, 60s, 2m, 1h (default 60s, at most 1h)")
    load.add_argument("--shape", choices=sorted(SHAPES), default="steady", help="load over time")
    load.add_argument(
        "--psp-faults",
        choices=sorted(PROFILES),
        default="none",
        help="fault profile set on the PSP emulator for the run (default none)",
    )
    load.add_argument("--merchants", type=int, default=4, help="merchants created for the run (default 4)")
    load.add_argument(
        "--refund-share", type=float, default=0.1, help="share of succeeded charges refunded (default 0.1)"
    )
    load.add_argument("--csv", metavar="PREFIX", help="write Locust's CSV statistics to PREFIX_*.csv")
    load.add_argument("--html", metavar="FILE", help="write Locust's HTML report to FILE")

    from ops.chaos.cli import add_arguments as chaos_arguments
    from sim.cli import add_arguments as simulate_arguments

    chaos = commands.add_parser(
        "chaos",
        help="start a multi-node stack, load it with Locust, inject faults on a schedule, then check every "
        "invariant and time each recovery; exit 1 on a violation or a fault not recovered",
    )
    chaos_arguments(chaos)

    simulate = commands.add_parser(
        "simulate", help="the SimPy fault-injection simulator: scenarios and component swaps, by seed"
    )
    simulate_arguments(simulate)

    emulator = commands.add_parser(
        "psp-emulator", help="run the Stripe-compatible PSP emulator", add_help=False
    )
    emulator.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _utc_day(value: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date YYYY-MM-DD") from None
    if len(value) != 10 or day > datetime.now(UTC).date():
        raise argparse.ArgumentTypeError(f"{value!r} is not a past or current UTC day YYYY-MM-DD")
    return day


def _event_id(value: str) -> str:
    if not value.startswith("evt_") or not value[4:].isalnum() or len(value) > 100:
        raise argparse.ArgumentTypeError(f"{value!r} is not an event id evt_…")
    return value


def _endpoint_id(value: str) -> str:
    if not value.startswith("we_") or not value[3:].isalnum() or len(value) > 100:
        raise argparse.ArgumentTypeError(f"{value!r} is not a webhook endpoint id we_…")
    return value


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the API's base URL (default: the stack `payray up` started)")
    parser.add_argument("--admin-key", help="the admin key (default: the one `payray up` stored)")


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
    if args.command not in ("up", "chaos"):
        _trust_the_local_stack(settings)
    handlers = {
        "up": _up,
        "migrate": _migrate,
        "merchant": _merchant,
        "verify": _verify,
        "recon": _reconcile,
        "simulate": _simulate,
        "loadtest": _loadtest,
        "chaos": _chaos,
        "demo": _demo,
        "webhooks": _webhooks_resend,
        "tls": tls_cli.main,
    }
    return handlers[args.command](settings, args)


def _trust_the_local_stack(settings: Settings) -> None:
    """The stack ``payray up --tls`` runs here presents its local CA's certificates: the tools that call it
    trust that CA besides certifi's (see :func:`ops.tls.trust_stack_ca`)."""
    local_ca = running_stack(settings.home).get("local_ca")
    if local_ca and Path(local_ca).is_file():
        trust_stack_ca(Path(local_ca))


def _chaos(settings: Settings, args: argparse.Namespace) -> int:
    from ops.chaos.cli import main as chaos

    return chaos(args)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from ops.demo import run

    return run(settings, args)


def _up(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from ops.cluster import MAX_NODES, LocalCluster
    from ops.stack import Stack, haproxy_available

    if not 0 < args.port < 65536:
        print(f"payray up: error: --port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    if not 1 <= args.nodes <= MAX_NODES:
        print(f"payray up: error: --nodes must be 1..{MAX_NODES}, got {args.nodes}", file=sys.stderr)
        return 2
    if args.proxy == "haproxy" and not haproxy_available():
        print("payray up: error: --proxy haproxy needs HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    tls = tls_cli.edge_tls(args)
    if isinstance(tls, str):
        print(f"payray up: error: {tls}", file=sys.stderr)
        return 2
    if tls is not None and not haproxy_available():
        print("payray up: error: --tls needs HAProxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    use_haproxy = args.proxy == "haproxy" or (args.proxy == "auto" and haproxy_available())
    console = Console()
    cluster = LocalCluster(nodes=args.nodes, say=console.print) if args.nodes > 1 else None
    if cluster is not None:  # replicas spread over the nodes (one each by default): a lost node leaves others
        replicas = settings.api_replicas if "PAYRAY_API_REPLICAS" in os.environ else args.nodes
        per_node = settings.api_replicas_per_node or -(-replicas // args.nodes)
        settings = settings.with_(api_replicas=replicas, api_replicas_per_node=per_node)
    stack = Stack(
        settings,
        host=args.host,
        port=args.port,
        num_cpus=args.num_cpus,
        haproxy=use_haproxy,
        say=console.print,
        cluster=cluster,
        tls=tls,
    )
    with console.status("starting Postgres, Redis, the PSP, Ray and the API…"):
        info = stack.start()
    console.print(f"[bold green]payray is up[/] at [bold]{info.base_url}[/]")
    console.print(f"  admin key:         {info.admin_key}")
    console.print(f"  demo merchant:     {info.demo_merchant_id}")
    console.print(f"  demo merchant key: {info.demo_key}")
    ingress = "HAProxy (throughput-optimized)" if use_haproxy else "Serve proxy"
    console.print(f"  ingress:           {ingress}")
    console.print(f"  ops page:          {info.base_url}/dashboard (sign in with the admin key)")
    if cluster is not None:
        console.print(f"  Ray:               {cluster.nodes} nodes, RAY_ADDRESS={cluster.address}")
        console.print(f"  Ray dashboard:     {cluster.dashboard_url}")
        auth = " ".join(f"{k}={v}" for k, v in cluster.auth_env.items())
        console.print(f"  Ray token:         {auth}", soft_wrap=True)  # one line, to copy
    if info.psp_api_base:
        console.print(f"  PSP:               {info.psp_api_base}")
    if tls is not None:
        trust = f"{info.ca_file} (the local CA)" if info.ca_file else f"{tls.cert}'s CA"
        mutual = f"; clients need a certificate signed by {tls.client_ca}" if tls.client_ca else ""
        console.print(f"  TLS:               HTTPS, trust {trust}{mutual}", soft_wrap=True)
    curl = "curl -s"
    if info.ca_file:
        curl += f" --cacert {info.ca_file}"
    if tls is not None and tls.client_ca:
        curl += " --cert client.pem --key client-key.pem"
    console.print(
        f"  try: {curl} {info.base_url}/v1/charges -H 'Authorization: Bearer {info.demo_key}' "
        "-H 'Idempotency-Key: demo-1' -d amount=1000 -d currency=usd -d payment_method=pm_card_visa",
        soft_wrap=True,
    )
    console.print("Ctrl-C stops everything payray started.")
    stopped = threading.Event()
    # Also when started in the background by a shell, which would have SIGINT ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, lambda *_: stopped.set())
    try:
        stopped.wait()  # the handlers above run on the main thread and wake it
    finally:
        with console.status("stopping…"):
            stack.stop()
    console.print("stopped.")
    return 0


def _with_database(settings: Settings) -> tuple[str, object | None]:
    if settings.database_url:
        return settings.database_url, None
    from ops.embedded import EmbeddedPostgres

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


def _merchant(settings: Settings, args: argparse.Namespace) -> int:
    return (
        _merchant_routing(settings, args)
        if args.merchant_command == "routing"
        else _merchant_create(settings, args)
    )


def _merchant_routing(settings: Settings, args: argparse.Namespace) -> int:
    """Through the running API, which checks the list (an unknown PSP is refused and nothing stored)."""
    target = _target(settings, args)
    if target is None:
        print(
            "payray merchant routing: error: no running stack found; pass --url and --admin-key",
            file=sys.stderr,
        )
        return 2
    url, admin_key = target
    path = f"/v1/admin/merchants/{urllib.parse.quote(args.merchant, safe='')}/routing"
    body = None if args.psps is None else {"psps": [p.strip() for p in args.psps.split(",")]}
    try:
        answer = _admin_call(url, admin_key, path, body)
    except (urllib.error.URLError, OSError) as exc:
        print(f"payray merchant routing: error: {exc}", file=sys.stderr)
        return 2 if "answered 4" in str(exc) else 1  # refused: the request, not the stack
    print(json.dumps(answer))
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


def _target(settings: Settings, args: argparse.Namespace) -> tuple[str, str] | None:
    """The API and admin key to call: given, or the stack's here (on loopback when its TLS front asks for
    client certificates)."""
    stored = running_stack(settings.home)
    url = args.url or stored.get("local_url") or stored.get("base_url")
    key = args.admin_key or settings.admin_key or stored.get("admin_key")
    return (url.rstrip("/"), key) if url and key else None


def _admin_call(url: str, admin_key: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin request; the API's error message (not urllib's) when it refuses."""
    request = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise OSError(f"{path} answered {exc.code}: {message}") from None
    return answer


def _fetch_invariants(url: str, admin_key: str) -> dict[str, Any]:
    return _admin_call(url, admin_key, "/v1/admin/invariants")


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args)
    if target is None:
        print("payray verify: error: no running stack found; pass --url and --admin-key", file=sys.stderr)
        return 2
    try:
        report = _fetch_invariants(*target)
    except (urllib.error.URLError, OSError) as exc:
        print(f"payray verify: error: cannot reach {target[0]}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1


def _webhooks_resend(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args)
    if target is None:
        print("payray webhooks: error: no running stack found; pass --url and --admin-key", file=sys.stderr)
        return 2
    body = {"endpoint": args.endpoint} if args.endpoint else {}
    try:
        answer = _admin_call(*target, f"/v1/admin/events/{args.event}/resend", body)
    except (urllib.error.URLError, OSError) as exc:
        print(f"payray webhooks: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer))
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from sim.cli import check_arguments
    from sim.cli import main as simulate

    problem = check_arguments(args)
    if problem is not None:
        print(f"payray simulate: error: {problem}", file=sys.stderr)
        return 2
    return simulate(args)


SHOWN = 100


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    target = _target(settings, args)
    if target is None:
        print("payray recon: error: no running stack found; pass --url and --admin-key", file=sys.stderr)
        return 2
    try:
        run = _admin_call(*target, "/v1/reconciliation/runs", {"date": args.date.isoformat()})
        found = _admin_call(*target, f"/v1/reconciliation/discrepancies?run={run['id']}&limit={SHOWN}")
    except OSError as exc:
        print(f"payray recon: error: {exc}", file=sys.stderr)
        return 2
    console = Console()
    if run["status"] != "succeeded":
        console.print(f"[bold red]reconciliation of {run['date']} {run['status']}[/]: {run['error']}")
        return 1
    counts = run["discrepancies"]
    console.print(
        f"reconciliation {run['id']} of {run['date']} (attempt {run['attempts']}): "
        f"{run['psp_rows']} PSP rows, {run['ledger_rows']} ledger rows, {run['matched']} matched, "
        f"{sum(counts.values())} discrepancies, {run['resolved_late']} earlier ones matched late"
    )
    by_psp = run.get("by_psp") or {}
    if len(by_psp) > 1:
        for name, part in by_psp.items():
            console.print(
                f"  {name}: {part['psp_rows']} PSP rows, {part['ledger_rows']} ledger rows, "
                f"{part['matched']} matched, {part['voided']} voided, "
                f"{sum(part['discrepancies'].values())} discrepancies"
            )
    if found["data"]:
        table = Table("id", "psp", "kind", "category", "reference", "status", "detail")
        for d in found["data"]:
            table.add_row(
                d["id"], d.get("psp_name") or "", d["kind"], d["category"], d["reference"], d["status"],
                d["detail"],
            )  # fmt: skip
        console.print(table)
    if found["has_more"]:
        console.print(f"… more at GET /v1/reconciliation/discrepancies?run={run['id']}")
    return 1 if any(counts.values()) else 0


def _loadtest(settings: Settings, args: argparse.Namespace) -> int:
    from loadtest.options import check_run
    from loadtest.run import LoadRun, parse_run_time

    def error(message: str) -> int:
        print(f"payray loadtest: error: {message}", file=sys.stderr)
        return 2

    target = _target(settings, args)
    if target is None:
        return error("no running stack found; pass --url and --admin-key")
    url, admin_key = target
    psp_url = args.psp_url or running_stack(settings.home).get("psp_api_base")
    try:
        run_time_s = parse_run_time(args.run_time)
    except ValueError as exc:
        return error(str(exc))
    problems = check_run(
        url, psp_url, args.users, args.spawn_rate, run_time_s, args.merchants, args.psp_faults
    )
    if not 0 <= args.refund_share <= 1:
        problems.append(f"--refund-share must be in [0, 1], got {args.refund_share}")
    if problems:
        return error("; ".join(problems))
    run = LoadRun(
        url, args.users, args.spawn_rate, run_time_s, args.shape, args.psp_faults, args.merchants,
        args.csv, args.html, args.refund_share,
    )  # fmt: skip
    env = {**os.environ, "PAYRAY_ADMIN_KEY": admin_key}
    if psp_url:
        env["PAYRAY_PSP_URL"] = psp_url
    locust = subprocess.run(run.command(), env=env, check=False)
    try:
        report = _fetch_invariants(url, admin_key)
    except (urllib.error.URLError, OSError) as exc:
        return error(f"cannot verify the invariants at {url}: {exc}")
    print(json.dumps(report, indent=2))
    print(f"locust exit status {locust.returncode}; invariants {'hold' if report.get('ok') else 'VIOLATED'}")
    return 0 if report.get("ok") and locust.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
