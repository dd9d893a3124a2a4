"""``ray_cluster.yaml`` stays runnable: every payray command in it is one the CLI takes, a node's certificate
command issues a certificate Ray can use, and both kinds of node start Ray with mutual TLS."""

from __future__ import annotations

import re
import shlex
import ssl
from pathlib import Path

import pytest
import yaml

from ops.cli import _parser, main

CLUSTER = yaml.safe_load((Path(__file__).resolve().parents[2] / "ray_cluster.yaml").read_text())
COMMANDS = [
    *CLUSTER["setup_commands"],
    *CLUSTER["head_start_ray_commands"],
    *CLUSTER["worker_start_ray_commands"],
]


def _payray_args(command: str, home: Path) -> list[str]:
    """The arguments after ``payray``, with the node's shell expansions done as a node would."""
    expanded = re.sub(r"\$\(hostname -I[^)]*\)\)?", "10.0.0.5", command).replace("$HOME", str(home))
    words = shlex.split(expanded.replace("~", str(home)))
    words = words[: words.index(">")] if ">" in words else words
    return words[[w.endswith("/payray") for w in words].index(True) + 1 :]


@pytest.mark.parametrize("command", [c for c in COMMANDS if "bin/payray " in c])
def test_every_payray_command_of_the_cluster_parses(command: str, tmp_path: Path) -> None:
    _parser().parse_args(_payray_args(command, tmp_path))


def test_a_node_issues_itself_a_certificate_ray_can_use(tmp_path: Path) -> None:
    [issue] = [c for c in CLUSTER["setup_commands"] if "payray tls issue" in c]
    assert main(_payray_args(issue, tmp_path)) == 0
    context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    context.load_cert_chain(tmp_path / "tls" / "node.pem", tmp_path / "tls" / "node-key.pem")


@pytest.mark.parametrize("kind", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_node_starts_ray_with_mutual_tls_and_a_token(kind: str) -> None:
    [start] = [c for c in CLUSTER[kind] if "ray start" in c]
    settings = (
        "RAY_AUTH_MODE=token",
        "RAY_USE_TLS=1",
        "RAY_TLS_SERVER_CERT=$HOME/tls/node.pem",
        "RAY_TLS_SERVER_KEY=$HOME/tls/node-key.pem",
        "RAY_TLS_CA_CERT=$HOME/tls/ca.pem",
    )
    for setting in settings:
        assert setting in start.split()
