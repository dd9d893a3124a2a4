"""Keep the embedded stack on 127.0.0.1: a single machine has nothing to offer its network but the API.

``payray up`` without ``RAY_ADDRESS`` starts Ray on this machine alone. Three settings keep it on loopback:

- Ray binds its GCS, raylets, workers' gRPC ports, agents and metrics export to the node's IP, and takes
  127.0.0.1 for that IP when told this is a single-machine Ray (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  read when ``ray`` is imported).
- Serve's replicas open their inter-deployment gRPC port on ``[::]`` whatever the node's IP; a worker
  setup hook (Ray's ``worker_process_setup_hook``) narrows that to loopback in every worker process.
- Serve's HAProxy config binds its stats page (8404) and Prometheus endpoint (9101) on every interface and
  makes its admin socket mode 666, with no setting for either. Serve runs whatever binary
  ``RAY_SERVE_HAPROXY_BINARY_PATH`` names, so a launcher there rewrites those lines of the config Serve
  generated and then becomes the real HAProxy. Its log target becomes the local syslog socket instead of a
  UDP socket, which would be bound on every interface. Its requests carry the client's address in
  ``X-Forwarded-For``, for the rate limits; behind the TLS front (``BEHIND_TLS_FRONT``), the address the
  front wrote is kept rather than followed by the front's own.

On a cluster none of this applies: nodes must reach each other, and Ray's token authentication guards them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
#: Read by Ray at import: with "0", its node IP is the loopback address (as on a laptop).
SINGLE_MACHINE_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: HAProxy's sections whose listeners serve operators only: stats page and Prometheus endpoint.
OPERATOR_SECTIONS = ("frontend prometheus", "listen stats")
#: The local syslog socket: where HAProxy's default (UDP to 127.0.0.1:514) meant to log, minus the socket.
HAPROXY_LOG_TARGET = "/dev/log"
#: Set in the environment of Serve's HAProxy when the TLS front (ops/tls_front.py) is its only client.
BEHIND_TLS_FRONT = "PAYRAY_BEHIND_TLS_FRONT"


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now, for a server this stack starts."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def loopback_haproxy_config(text: str, behind_front: bool = False) -> str:
    """Serve's HAProxy config with its operator listeners on 127.0.0.1 and its admin socket owner-only.

    The API's own frontend keeps the address ``payray up --host`` gave it. Requests reach the replicas with
    ``X-Forwarded-For`` naming the client, whose failed authentications the rate limits count: the peer's
    address, or ``behind_front``, the one the TLS front set (its peer is the front itself).
    """
    lines = []
    section = ""
    forwardfor = "option forwardfor if-none" if behind_front else "option forwardfor"
    forwards = "option forwardfor" in text
    for line in text.splitlines(keepends=True):
        if line[:1].strip():  # a section header starts in the first column
            section = " ".join(line.split())
            if section == "defaults" and not forwards:
                lines.append(line if line.endswith("\n") else line + "\n")
                lines.append(f"    {forwardfor}\n")
                continue
        stripped = line.strip()
        if stripped == "option forwardfor":
            line = line.replace("option forwardfor", forwardfor)
        if section in OPERATOR_SECTIONS and stripped.startswith("bind "):
            indent = line[: len(line) - len(line.lstrip())]
            address, *options = stripped.split()[1:]
            port = address.rpartition(":")[2]
            ending = "\n" if line.endswith("\n") else ""
            line = f"{indent}{' '.join(['bind', f'{LOOPBACK}:{port}', *options])}{ending}"
        elif section == "global" and stripped.startswith("stats socket "):
            line = re.sub(r"\bmode \d+", "mode 600", line)
        lines.append(line)
    return "".join(lines)


def run_haproxy(binary: str, args: list[str]) -> None:
    """Rewrite the config named by ``-f`` (see :func:`loopback_haproxy_config`), then exec HAProxy.

    The process keeps its id and arguments, which Serve uses to find and signal its HAProxy workers.
    """
    if "-f" in args[:-1]:
        config = Path(args[args.index("-f") + 1])
        text = config.read_text()
        rewritten = loopback_haproxy_config(text, behind_front=os.environ.get(BEHIND_TLS_FRONT) == "1")
        if rewritten != text:
            staged = config.with_name(config.name + ".loopback")
            staged.write_text(rewritten)
            os.replace(staged, config)
    os.execv(binary, [binary, *args])


def haproxy_launcher(directory: Path, binary: str) -> Path:
    """An executable in ``directory`` that Serve can run as its HAProxy (see :func:`run_haproxy`)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    launcher = directory / "haproxy"
    if Path(binary).resolve() == launcher.resolve():  # already set by a stack started before in this process
        return launcher
    repo = str(Path(__file__).resolve().parent.parent)
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {repo!r})\n"
        "from ops.loopback import run_haproxy\n"
        f"run_haproxy({binary!r}, sys.argv[1:])\n"
    )
    launcher.chmod(0o700)
    return launcher


def haproxy_env(directory: Path, binary: str) -> dict[str, str]:
    """Serve's HAProxy settings for a loopback-only stack: the launcher as its binary, syslog as its log."""
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_launcher(directory, binary)),
        "RAY_SERVE_HAPROXY_LOG_TARGET": HAPROXY_LOG_TARGET,
    }


def keep_serve_grpc_on_loopback() -> None:
    """Worker setup hook: gRPC ports asked for on every interface open on loopback instead.

    Serve's replicas call ``add_port_to_grpc_server(server, "[::]:0")`` for their inter-deployment port,
    with no setting for the host; their callers reach them at the node's IP, which is loopback here. The
    hook runs when a worker starts, before Serve's replica module imports the function.
    """
    from ray._common import tls_utils

    add_port: Callable[[Any, str], int] = tls_utils.add_port_to_grpc_server

    def add_port_on_loopback(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        return add_port(server, f"{LOOPBACK}:{port}" if host in ("[::]", "0.0.0.0", "") else address)

    tls_utils.add_port_to_grpc_server = add_port_on_loopback
