"""``payray up --tls`` and ``payray tls rotate``: HTTPS on the API port, and a new certificate without a
restart. Files given are checked before anything starts or changes: a bad one is a clear error, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.tls import Authority, CertificateError, KeyPair, check_ca_file, check_pair, hosts_of
from payray.settings import Settings, running_stack

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
    from ops.tls_front import FrontError, replace_certificate

    stored = running_stack(settings.home)
    if "tls_admin_socket" not in stored:
        print(
            "payray tls rotate: error: no stack with a TLS front runs here (payray up --tls)", file=sys.stderr
        )
        return 1
    try:
        if args.cert or args.key:
            _checked_pair(args.cert, args.key)
            certificate = KeyPair(args.cert.resolve(), args.key.resolve())
        else:
            directory = settings.home.resolve() / "tls"
            served = check_pair(Path(stored["tls_certificate"]), Path(stored["tls_certificate"]))
            certificate = Authority.load_or_create(directory).issue(directory, "server", hosts_of(served))
    except CertificateError as exc:
        print(f"payray tls rotate: error: {exc}", file=sys.stderr)
        return 2
    try:
        replace_certificate(Path(stored["tls_admin_socket"]), Path(stored["tls_certificate"]), certificate)
    except (OSError, FrontError) as exc:
        print(f"payray tls rotate: error: {exc}", file=sys.stderr)
        return 1
    print(f"the TLS front serves {certificate.cert} from its next handshake on")
    return 0


def _checked_pair(cert: Path | None, key: Path | None) -> None:
    if cert is None or key is None:
        raise CertificateError("--cert and --key go together")
    check_pair(cert, key)
