"""The embedded stack's loopback rules: which addresses count, and how Serve's HAProxy config is narrowed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ops.loopback import haproxy_launcher, is_loopback, loopback_haproxy_config

#: The parts of the config Serve's template renders that the rewrite reads (Ray 2.x, trimmed).
SERVE_CONFIG = """global
    log 127.0.0.1:514 local0 info
    stats socket /tmp/haproxy-serve/n1/admin.sock mode 666 level admin expose-fd listeners
    stats timeout 30s
defaults
    mode http
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind *:8000
    default_backend default_backend
backend default_backend
    server replica_1 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
  stats uri /stats
"""


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses(address: str) -> None:
    assert is_loopback(address)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1", "fe80::1"])
def test_other_addresses(address: str) -> None:
    assert not is_loopback(address)


def test_operator_listeners_move_to_loopback_and_the_admin_socket_to_its_owner() -> None:
    rewritten = loopback_haproxy_config(SERVE_CONFIG)
    assert "    bind 127.0.0.1:9101\n" in rewritten
    assert "  bind 127.0.0.1:8404\n" in rewritten
    assert "admin.sock mode 600 level admin expose-fd listeners" in rewritten


def test_the_api_frontend_and_the_rest_stay_as_serve_wrote_them() -> None:
    rewritten = loopback_haproxy_config(SERVE_CONFIG).splitlines()
    assert rewritten.pop(rewritten.index("defaults") + 1) == "    option forwardfor"
    original = SERVE_CONFIG.splitlines()
    changed = [(before, after) for before, after in zip(original, rewritten, strict=True) if before != after]
    assert [before.strip() for before, _ in changed] == [
        "stats socket /tmp/haproxy-serve/n1/admin.sock mode 666 level admin expose-fd listeners",
        "bind :9101",
        "bind *:8404",
    ]
    assert loopback_haproxy_config(loopback_haproxy_config(SERVE_CONFIG)) == loopback_haproxy_config(
        SERVE_CONFIG
    )


def test_bind_options_are_kept() -> None:
    config = "listen stats\n  bind *:8404 ssl crt /x.pem\n"
    assert loopback_haproxy_config(config) == "listen stats\n  bind 127.0.0.1:8404 ssl crt /x.pem\n"


def test_the_launcher_rewrites_the_config_then_runs_haproxy_with_the_same_arguments(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(SERVE_CONFIG)
    seen = tmp_path / "seen"
    fake = tmp_path / "fake-haproxy"
    fake.write_text(f'#!/bin/sh\necho "$@" > {seen}\n')
    fake.chmod(0o700)
    launcher = haproxy_launcher(tmp_path / "bin", str(fake))
    assert stat.S_IMODE(launcher.stat().st_mode) == 0o700
    assert stat.S_IMODE(launcher.parent.stat().st_mode) == 0o700
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(launcher), "-db", "-f", str(config), "-dR"], check=True, env=env, timeout=60)
    assert seen.read_text().split() == ["-db", "-f", str(config), "-dR"]
    assert config.read_text() == loopback_haproxy_config(SERVE_CONFIG)
    assert haproxy_launcher(tmp_path / "bin", str(launcher)) == launcher  # a second stack in the process
    assert str(fake) in launcher.read_text()
    assert sys.executable in launcher.read_text()


def test_a_cluster_brings_its_own_token_readable_by_its_owner_only(tmp_path: Path) -> None:
    """A fresh machine has no ``~/.ray/auth_token``: ``ray start`` with token auth refused to start there."""
    from ops.cluster import LocalCluster, _make_token

    cluster = LocalCluster(temp_dir=tmp_path / "ray", token_file=tmp_path / "home" / "ray_auth_token")
    env = cluster.auth_env
    assert env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "home" / "ray_auth_token")}
    token_file = Path(env["RAY_AUTH_TOKEN_PATH"])
    _make_token(token_file)
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert token_file.stat().st_mode & 0o777 == 0o600
    _make_token(token_file)  # kept across restarts: nodes and tools started earlier still hold it
    assert token_file.read_text() == token
