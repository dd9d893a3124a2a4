"""``payray up --nodes 2``: a real two-node Ray cluster on loopback (two raylets, token authentication), the
work spread over both nodes, a worker node lost under charges with nothing lost, and ``serve deploy
serve_config.yaml`` onto the running cluster, as an operator deploys a new version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from ops.loopback import SINGLE_MACHINE_RAY, free_port
from ops.stack import EMULATOR_API_KEY
from tests.conftest import fresh_database
from tests.e2e.running_up import RunningUp
from tests.integration.polling import until

REPO = Path(__file__).resolve().parents[2]


def _tool_env(fields: dict[str, str]) -> dict[str, str]:
    """How a tool on this machine reaches the cluster: on loopback, with the token `payray up` printed."""
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": fields["ray token"]}
    return {**os.environ, **SINGLE_MACHINE_RAY, **auth}


@pytest.fixture
def cluster_up(tmp_path: Path, postgres_server_url: str, redis_url: str) -> Iterator[RunningUp]:
    with fresh_database(postgres_server_url) as database_url:
        env = {"PAYRAY_DATABASE_URL": database_url, "PAYRAY_REDIS_URL": redis_url}
        up = RunningUp(tmp_path / "home", free_port(), "--nodes", "2", env=env)
        try:
            up.wait_until_up()
            up.fields["database url"], up.fields["redis url"] = database_url, redis_url
            yield up
        finally:
            code = up.interrupt()
            assert code == 0, "".join(up.output[-30:])
    assert not _processes_of(up.fields.get("ray address", "-")), "payray up left Ray processes behind"


def _ray(fields: dict[str, str], *args: str) -> Any:
    """``ray list … --format json`` against the cluster, authenticated as its nodes are."""
    address = fields["ray address"]
    done = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "list", *args, "--address", address, "--format", "json"],
        env=_tool_env(fields),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _processes_of(gcs_address: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if gcs_address in " ".join(p.info["cmdline"] or ())]


def _charge(client: httpx.Client, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
    body = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"}
    return client.post("/v1/charges", data=body, headers=headers)


def _merchants(client: httpx.Client, admin_key: str, count: int) -> list[str]:
    admin = {"Authorization": f"Bearer {admin_key}"}
    return [
        client.post("/v1/merchants", json={"name": f"m{i}"}, headers=admin).json()["api_key"]
        for i in range(count)
    ]


def _verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "verify"],
        env={**os.environ, "PAYRAY_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _serve_deploy(fields: dict[str, str], home: Path, path: Path) -> None:
    """``serve deploy`` of the shipped ``serve_config.yaml``, given this cluster's connections and two wallet
    hosts (where ``payray up`` started one), over the running app."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # one machine: one proxy on the API's port
    (app,) = config["applications"]
    app["runtime_env"]["env_vars"].update(
        {
            "PAYRAY_DATABASE_URL": fields["database url"],
            "PAYRAY_REDIS_URL": fields["redis url"],
            "PAYRAY_ADMIN_KEY": fields["admin key"],
            "STRIPE_API_KEY": EMULATOR_API_KEY,
            "STRIPE_API_BASE": fields["PSP"],
            "STRIPE_WEBHOOK_SECRET": (home / "webhook_secret").read_text().strip(),
            "PAYRAY_WALLET_HOSTS": "2",
            "PAYRAY_API_REPLICAS_PER_NODE": "1",
        }
    )
    path.write_text(yaml.safe_dump(config))
    serve = str(Path(sys.executable).with_name("serve"))
    deployed = subprocess.run(
        [serve, "deploy", str(path), "--address", fields["Ray dashboard"]],
        env=_tool_env(fields),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr


def _until_running(fields: dict[str, str], timeout_s: float) -> None:
    """Until ``serve status`` says the app runs its new version everywhere (its rollout done)."""
    command = [str(Path(sys.executable).with_name("serve")), "status", "--address", fields["Ray dashboard"]]

    def running() -> bool:
        done = subprocess.run(command, env=_tool_env(fields), capture_output=True, text=True, timeout=60)
        status = yaml.safe_load(done.stdout) if done.returncode == 0 else None
        return isinstance(status, dict) and status["applications"]["payray"]["status"] == "RUNNING"

    until(running, timeout_s, "the deployed config's rollout")


def _until_all_charge(client: httpx.Client, keys: list[str], timeout_s: float) -> float:
    """Seconds until a charge of every merchant answers 200 (polled); fails after ``timeout_s``."""
    started = time.monotonic()
    until(
        lambda: all(_charge(client, key).status_code == 200 for key in keys),
        timeout_s,
        "every merchant charging",
    )
    return time.monotonic() - started


@pytest.mark.timeout(900)  # three Ray nodes start and a rollout runs: minutes on a slow or busy machine
def test_two_nodes_take_serve_deploy_spread_the_replicas_and_lose_a_node_losing_nothing(
    cluster_up: RunningUp, tmp_path: Path
) -> None:
    fields, home = cluster_up.fields, tmp_path / "home"
    address = fields["ray address"]
    assert address.startswith("127.0.0.1:")
    nodes = [n for n in _ray(fields, "nodes") if n["state"] == "ALIVE"]
    assert len(nodes) == 2 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}

    with httpx.Client(base_url=fields["url"], timeout=60) as client:
        keys = _merchants(client, fields["admin key"], 4)
        _until_all_charge(client, keys, 60)
        _serve_deploy(fields, home, tmp_path / "serve_config.yaml")
        _until_running(fields, 300)
        _until_all_charge(client, keys, 60)
        actors = _ray(fields, "actors", "--filter", "state=ALIVE", "--limit", "500")
        replicas = [a for a in actors if a["class_name"].startswith("ServeReplica:payray")]
        hosts = [a for a in actors if a["class_name"] == "WalletHost"]
        assert len(replicas) == 2 and len({a["node_id"] for a in replicas}) == 2, replicas  # one per node
        assert len(hosts) == 2, hosts  # the new config's two wallet hosts: its rollout is what serves

        # the worker node goes: its raylet and every process under it, killed
        raylets = [p for p in _processes_of(address) if p.name() == "raylet"]
        worker = max(raylets, key=lambda p: p.create_time())
        for process in [worker, *worker.children(recursive=True)]:
            process.kill()
        recovered_s = _until_all_charge(client, keys, 120)
        print(f"every merchant charged again {recovered_s:.1f} s after the node was lost")
    verify = _verify(home)
    assert verify.returncode == 0, verify.stdout + verify.stderr
