"""``payray up --tls`` and ``payray tls rotate|front|issue``: HTTPS on the API port, a new certificate
without a restart, a TLS front on its own before a cluster node's Serve proxy, and certificates from a CA
directory for a cluster's nodes. Files given are checked before anything starts or changes: a bad one is a
clear error, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.tls import Authority, CertificateError, KeyPair, check_ca_file, check_pair, hosts_of
from payray.settings import Settings

if TYPE_CHECKING:
    from ops.stack import EdgeTls


def add_up_arguments(up: argparse.ArgumentParser) -> None:
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS on the API port, with a certificate from a local CA ($PAYRAY_HOME/tls/ca.pem) "
        "unless --cert/--key name one",
    )
    up.add_argument("--cert", type=Path, help="the API's certificate chain, PEM (implies --tls; needs --key)")
    up.add_argument("--key", type=Path, help="the private key of --cert, PEM, unencrypted")
    up.add_argument(
        "--client-ca",
        type=Path,
        help="require client certificates signed by a CA of this PEM file (mutual TLS; implies --tls)",
    )


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    tls = commands.add_parser("tls", help="the API's TLS front")
    tls_commands = tls.add_subparsers(dest="tls_command", required=True, parser_class=type(tls))
    rotate = tls_commands.add_parser(
        "rotate",
        help="serve a new certificate from the next handshake on, without a restart or a dropped request: "
        "--cert/--key, or a new one from the local CA",
    )
    rotate.add_argument("--cert", type=Path, help="the new certificate chain, PEM (needs --key)")
    rotate.add_argument("--key", type=Path, help="the private key of --cert, PEM, unencrypted")
    front = tls_commands.add_parser(
        "front",
        help="run a TLS front alone until interrupted: HTTPS on --port for Serve's plain port on this "
        "machine's loopback (a cluster's ingress node, in front of serve deploy's proxy)",
    )
    front.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    front.add_argument("--port", type=int, default=8443, help="HTTPS port (default 8443)")
    front.add_argument(
        "--upstream-port", type=int, default=8000, help="Serve's port on 127.0.0.1 (default 8000)"
    )
    front.add_argument("--cert", type=Path, required=True, help="the certificate chain, PEM")
    front.add_argument("--key", type=Path, required=True, help="the private key of --cert, PEM, unencrypted")
    front.add_argument(
        "--client-ca", type=Path, help="require client certificates signed by a CA of this file"
    )

    issue = tls_commands.add_parser(
        "issue",
        help="a certificate from the CA kept in --ca-dir (made there on first use): for a Ray node (server "
        "and client, as Ray's TLS is mutual), a driver, or the TLS front",
    )
    issue.add_argument("--ca-dir", type=Path, required=True, help="where the CA's ca.pem and ca-key.pem are")
    issue.add_argument("--name", required=True, help="the files' stem: NAME.pem and NAME-key.pem in --ca-dir")
    issue.add_argument("--hosts", required=True, help="IP addresses and DNS names, comma-separated")
    issue.add_argument("--client", action="store_true", help="also for client authentication (Ray's nodes)")


def main(settings: Settings, args: argparse.Namespace) -> int:
    commands = {"rotate": rotate, "front": run_front, "issue": issue}
    return commands[args.tls_command](settings, args)


def issue(_settings: Settings, args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if not hosts or not args.name.replace("-", "").replace("_", "").isalnum():
        message = "--hosts names at least one host; --name is letters, digits, - and _"
        print(f"payray tls issue: error: {message}", file=sys.stderr)
        return 2
    try:
        authority = Authority.load_or_create(args.ca_dir)
        pair = authority.issue(args.ca_dir, args.name, hosts, client=args.client)
    except (CertificateError, ValueError) as exc:
        print(f"payray tls issue: error: {exc}", file=sys.stderr)
        return 2
    print(f"{pair.cert} and {pair.key}, signed by {authority.cert_path}")
    return 0


def edge_tls(args: argparse.Namespace) -> EdgeTls | str | None:
    """What ``payray up``'s TLS flags ask for: None (plain HTTP), the checked options, or an error line."""
    from ops.stack import EdgeTls

    if not (args.tls or args.cert or args.key or args.client_ca):
        return None
    try:
        if args.cert or args.key:
            _checked_pair(args.cert, args.key)
        if args.client_ca:
            check_ca_file(args.client_ca)
    except CertificateError as exc:
        return str(exc)

    def resolved(path: Path | None) -> Path | None:
        return path.resolve() if path else None

    return EdgeTls(resolved(args.cert), resolved(args.key), resolved(args.client_ca))


def rotate(settings: Settings, args: argparse.Namespace) -> int:
    from ops.tls_front import FRONT_DIR, FrontError, replace_certificate, running_front

    directory = settings.home.resolve() / "tls"
    front = running_front(directory / FRONT_DIR)
    if front is None:
        message = "no TLS front runs from $PAYRAY_HOME (payray up --tls, or payray tls front)"
        print(f"payray tls rotate: error: {message}", file=sys.stderr)
        return 1
    served = Path(front["certificate"])
    try:
        if args.cert or args.key:
            _checked_pair(args.cert, args.key)
            certificate = KeyPair(args.cert.resolve(), args.key.resolve())
        else:
            hosts = hosts_of(check_pair(served, served))
            certificate = Authority.load_or_create(directory).issue(directory, "server", hosts)
    except CertificateError as exc:
        print(f"payray tls rotate: error: {exc}", file=sys.stderr)
        return 2
    try:
        replace_certificate(Path(front["admin_socket"]), served, certificate)
    except (OSError, FrontError) as exc:
        print(f"payray tls rotate: error: {exc}", file=sys.stderr)
        return 1
    print(f"the TLS front serves {certificate.cert} from its next handshake on")
    return 0


def run_front(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import threading

    from ops.stack import haproxy_binary
    from ops.tls_front import FRONT_DIR, TlsFront

    problem = None
    if not 0 < args.port < 65536 or not 0 < args.upstream_port < 65536:
        problem = "--port and --upstream-port must be 1..65535"
    try:
        _checked_pair(args.cert, args.key)
        if args.client_ca:
            check_ca_file(args.client_ca)
    except CertificateError as exc:
        problem = str(exc)
    binary = haproxy_binary()
    if binary is None:
        problem = "the TLS front needs HAProxy (it comes with ray[serve], or apt-get install haproxy)"
    if problem or binary is None:
        print(f"payray tls front: error: {problem}", file=sys.stderr)
        return 2
    front = TlsFront(
        binary,
        settings.home.resolve() / "tls" / FRONT_DIR,
        args.host,
        args.port,
        args.upstream_port,
        KeyPair(args.cert.resolve(), args.key.resolve()),
        client_ca=args.client_ca.resolve() if args.client_ca else None,
    )
    stopped = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, lambda *_: stopped.set())
    print(f"TLS front at {front.start()} for 127.0.0.1:{args.upstream_port}; Ctrl-C stops it", flush=True)
    try:
        stopped.wait()
    finally:
        front.stop()
    return 0


def _checked_pair(cert: Path | None, key: Path | None) -> None:
    if cert is None or key is None:
        raise CertificateError("--cert and --key go together")
    check_pair(cert, key)
