"""A real multi-node Ray cluster on one machine: a head and N-1 worker nodes, each its own raylet started by
``ray start``, on loopback, with Ray's token authentication (a token of its own): what ``payray up --nodes N``
starts.

Each node gets two CPUs and a resource naming it (``payray_node_<i>``), as separate machines would; the
wallet hosts and the Serve replicas spread over the nodes as they would over machines. A worker
node can be lost on purpose (its raylet killed, with every worker process of it) and another one added, as
an autoscaler replaces a lost machine. A lost node is marked dead within about 1.5 s (``NODE_HEALTH``), so
a lost node costs seconds, not half a minute.

With ``tls_dir``, Ray's own traffic is encrypted too (``RAY_USE_TLS``, always mutual): a CA of the
cluster's own signs a certificate per node and one for drivers and tools, so a process without one cannot
join or call in, whatever it knows of the token.

The cluster keeps its files under a short temporary directory of its own (Unix socket paths are short), and
stopping it kills only its own processes: ``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ops.loopback import LOOPBACK, SINGLE_MACHINE_RAY, free_port
from ops.tls import Authority, KeyPair

#: How the GCS decides a node is gone: three missed health checks in a row, one every half second. A
#: killed raylet refuses the checks at once, so it is marked dead in 1.5 s; a hung one answers none within
#: its second. Ray's defaults (every 3 s, five missed, 10 s to answer) take 15 s or more.
NODE_HEALTH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
START_TIMEOUT_S = 120
#: One machine: each node costs a raylet and its agents (about 5 s and 300 MB to start).
MAX_NODES = 8


def node_resource(index: int) -> str:
    """The resource only node ``index`` has: what pins work to it."""
    return f"payray_node_{index}"


@dataclass(frozen=True)
class Node:
    index: int
    raylet_pid: int


@dataclass
class LocalCluster:
    """``start()`` answers the GCS address (``127.0.0.1:<port>``) that ``RAY_ADDRESS`` takes."""

    nodes: int = 2
    #: two, so that a node starts two worker processes at once (Ray allows as many as its CPUs): a lost
    #: node's actors restart on the others in parallel
    cpus_per_node: int = 2
    object_store_mb: int = 256
    #: set in every node's environment, so in every worker process: the stack's settings, HAProxy's
    env: Mapping[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = print
    port: int = 0
    dashboard_port: int = 0
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp")))
    #: the cluster's token, made on start if missing (default: under ``temp_dir``, gone with the cluster)
    token_file: Path | None = None
    #: where the cluster's CA and its nodes' certificates live: Ray's gRPC over mutual TLS; None: plain
    tls_dir: Path | None = None
    running: dict[int, Node] = field(default_factory=dict)
    _next_index: int = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def auth_env(self) -> dict[str, str]:
        """What a node, a driver or a tool (``ray``, ``serve``) needs in its environment to join: Ray's token
        authentication, with this cluster's token, and with TLS on, the drivers' certificate."""
        token_file = self.token_file or self.temp_dir / "auth_token"
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
        if self.tls_dir is not None:
            env |= self._tls_env(self._certificate("driver"))
        return env

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def start(self) -> str:
        if self.nodes < 1:
            raise ValueError("a cluster has at least its head node")
        self.port = self.port or free_port()
        _make_token(Path(self.auth_env["RAY_AUTH_TOKEN_PATH"]))
        self.dashboard_port = self.dashboard_port or free_port()
        try:
            self._start_node(head=True)
            for _ in range(self.nodes - 1):
                self.add_node()
        except BaseException:
            self.stop()
            raise
        return self.address

    def add_node(self, nice: int = 0) -> Node:
        """Another worker node joins (the next index): as a replacement for a lost one, or to grow.

        ``nice`` lowers the CPU priority of the node's processes, for good: a node that joins a running
        cluster on this machine would otherwise take the CPU its start-up needs (about ten seconds of both
        cores here) from the nodes serving, where a real one boots on its own machine.
        """
        return self._start_node(head=False, nice=nice)

    def kill_node(self, index: int) -> None:
        """Lose worker node ``index`` at once: its raylet and every process under it, killed (SIGKILL)."""
        if index == 0:
            raise ValueError("the head node holds the GCS: losing it is losing the cluster")
        node = self.running.pop(index)
        _kill_tree(node.raylet_pid)

    def stop(self) -> None:
        """Kill every process of this cluster (and only those), then remove its files."""
        markers = (str(self.temp_dir), f"--address={self.address}", f"--gcs-address={self.address}")
        for _ in range(3):
            processes = psutil.process_iter(["cmdline"])
            ours = [p for p in processes if any(m in _cmdline(p) for m in markers)]
            if not ours:
                break
            for process in ours:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(ours, timeout=5)
        self.running.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _start_node(self, head: bool, nice: int = 0) -> Node:
        index = self._next_index
        before = set(self._raylets())
        command = [
            sys.executable, "-m", "ops.ray_start", "start",
            f"--node-ip-address={LOOPBACK}",
            f"--num-cpus={self.cpus_per_node}",
            f"--resources={{\"{node_resource(index)}\": 1}}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
        ]  # fmt: skip
        if head:
            command += [
                "--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
                f"--dashboard-host={LOOPBACK}", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ]  # fmt: skip
        else:
            # every node of one machine needs its own agent ports: 0 lets each pick a free one
            command += [f"--address={self.address}", "--dashboard-agent-listen-port=0"]
        # every process of the node (the dashboard's, the workers') takes 127.0.0.1 for this machine's address
        env = {**os.environ, **SINGLE_MACHINE_RAY, **self.auth_env, **NODE_HEALTH, **self.env}
        if self.tls_dir is not None:
            env |= self._tls_env(self._certificate(f"node-{index}"))
        env.pop("RAY_ADDRESS", None)
        started = time.monotonic()
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )  # fmt: skip
        if done.returncode != 0:
            output = done.stdout[-2000:] + done.stderr[-2000:]
            raise RuntimeError(f"ray start failed for node {index}:\n{output}")
        new = self._wait_for_new_raylet(before)
        node = Node(index, new)
        self.running[index] = node
        self._next_index += 1
        role = "head" if head else "worker"
        self.say(f"Ray node {index} ({role}) up in {time.monotonic() - started:.1f} s")
        return node

    def _certificate(self, name: str) -> KeyPair:
        """``name``'s certificate from the cluster's CA (made on first use), for loopback: a node's serves
        and authenticates it, as Ray's TLS is mutual."""
        assert self.tls_dir is not None
        directory = self.tls_dir / "ray"
        authority = Authority.load_or_create(directory, name="payray Ray cluster CA")
        return authority.current(directory, name, [LOOPBACK, "localhost"], client=True)

    def _tls_env(self, pair: KeyPair) -> dict[str, str]:
        assert self.tls_dir is not None
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(pair.cert),
            "RAY_TLS_SERVER_KEY": str(pair.key),
            "RAY_TLS_CA_CERT": str(self.tls_dir / "ray" / "ca.pem"),
        }

    def _raylets(self) -> list[int]:
        marker = str(self.temp_dir)
        processes = psutil.process_iter(["name", "cmdline"])
        return [p.pid for p in processes if p.info["name"] == "raylet" and marker in _cmdline(p)]

    def _wait_for_new_raylet(self, before: set[int]) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = set(self._raylets()) - before
            if new:
                return new.pop()
            time.sleep(0.1)
        raise RuntimeError("ray start returned but no new raylet of this cluster is running")


def _make_token(path: Path) -> None:
    """A random token as Ray makes one (``ray get-auth-token --generate``), readable by its owner only."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))


def _cmdline(process: psutil.Process) -> str:
    return " ".join(process.info["cmdline"] or ())


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [root, *root.children(recursive=True)]
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=5)
