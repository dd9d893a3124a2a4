"""The faults themselves: each breaks one real part of the running stack and says what it hit.

A fault is a function of the ``Target`` (the running parts and how to reach them). It returns a line saying
what it did, after lifting itself when it lasts (a PSP outage is set on the emulator, waited out, cleared).
Kills go through Ray or the OS exactly as a crash would come: nothing is told first.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import ray
import redis
from ray.util import state

from actors.wallet_host import host_name
from ops.chaos.clients import send_charge
from ops.chaos.measure import Request
from ops.chaos.plan import FAULTS
from ops.cluster import LocalCluster, node_resource
from ops.embedded import EmbeddedPostgres, EmbeddedRedis

#: The Serve replicas' actors: ``ServeReplica:<app>:<deployment>``.
REPLICA_CLASS = "ServeReplica:payray:PaymentApi"
HOST_CLASS = "WalletHost"


@dataclass
class Target:
    cluster: LocalCluster
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    redis_url: str
    base_url: str
    psp_url: str
    namespace: str
    wallet_hosts: int
    #: API keys of merchants the bursts (retry storm, hot merchant) charge as
    merchant_keys: list[str]
    rng: random.Random
    #: where bursts record the requests they send, as the load does
    record: Callable[[Request], None]
    _joining: threading.Thread | None = field(default=None, repr=False)

    def until_node_joined(self) -> None:
        if self._joining is not None:
            self._joining.join()
            self._joining = None


def inject(name: str, target: Target) -> str:
    return INJECTORS[name](target)


# -- Ray: nodes, replicas, wallet hosts -------------------------------------------------------------------


def node_lost(target: Target) -> str:
    """The worker node running most of payray's actors loses its raylet and every process under it. A new
    node joins in the background, as an autoscaler would bring one, so later faults have a worker again."""
    target.until_node_joined()
    placed = _actors_by_node()
    workers = [i for i in target.cluster.running if i != 0]
    if not workers:
        raise RuntimeError("the cluster has no worker node to lose")
    victim = max(workers, key=lambda i: (len(placed.get(i, [])), -i))
    hit = sorted(placed.get(victim, []))
    target.cluster.kill_node(victim)
    # a replacement machine boots on its own cores; on this one, it must not take the survivors'
    target._joining = threading.Thread(target=target.cluster.add_node, kwargs={"nice": 10}, daemon=True)
    target._joining.start()
    return f"node {victim} lost with {', '.join(hit) or 'no payray actor'}; a new node joins"


def replica_killed(target: Target) -> str:
    replicas = _alive(REPLICA_CLASS)
    if not replicas:
        raise RuntimeError("no API replica is alive")
    victim = target.rng.choice(replicas)
    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    return f"replica {victim.name.rsplit('#', 1)[-1]} on node {_node_index(victim.node_id)} killed"


def wallet_host_killed(target: Target) -> str:
    index = target.rng.randrange(target.wallet_hosts)
    ray.kill(ray.get_actor(host_name(index), namespace=target.namespace), no_restart=False)
    return f"wallet host {index} killed"


def ledger_writer_killed(target: Target, wait_s: float = 5.0) -> str:
    """SIGKILL a wallet host's process at a moment its ledger writer has postings queued or being written."""
    index = target.rng.randrange(target.wallet_hosts)
    host = ray.get_actor(host_name(index), namespace=target.namespace)
    deadline = time.monotonic() + wait_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = dict(ray.get(host.stats.remote(), timeout=5))
        if stats["writer_writing"] or stats["writer_queued"]:
            break
    [actor] = [a for a in _alive(HOST_CLASS) if a.name == host_name(index)]
    os.kill(actor.pid, signal.SIGKILL)
    held = int(stats.get("writer_writing", 0) + stats.get("writer_queued", 0))
    return f"wallet host {index} (pid {actor.pid}) killed holding {held} postings"


def _alive(class_name: str) -> list[Any]:
    actors = state.list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, detail=True)
    return [a for a in actors if a.class_name == class_name]


def _actors_by_node() -> dict[int, list[str]]:
    placed: dict[int, list[str]] = {}
    for actor in _alive(REPLICA_CLASS) + _alive(HOST_CLASS):
        label = "replica" if actor.class_name == REPLICA_CLASS else actor.name
        placed.setdefault(_node_index(actor.node_id), []).append(label)
    return placed


def _node_index(node_id: str) -> int:
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            for resource in node["Resources"]:
                if resource.startswith(node_resource(0)[:-1]):
                    return int(resource.rsplit("_", 1)[-1])
    return -1


# -- Redis and Postgres ------------------------------------------------------------------------------------


def redis_flushall(target: Target) -> str:
    with redis.Redis.from_url(target.redis_url) as client:
        keys = client.dbsize()
        client.flushall()
    return f"{keys} keys deleted"


def redis_restart(target: Target) -> str:
    target.redis.restart()
    return "Redis killed and started again, empty"


def postgres_restart(target: Target) -> str:
    target.postgres.restart()
    return "Postgres stopped (immediate) and started again"


# -- the PSP and its webhooks -------------------------------------------------------------------------------


def psp_timeouts(target: Target) -> str:
    faults = {"timeout_after_capture_rate": 0.3, "hold_ms": 3000, "seed": target.rng.randrange(2**31)}
    _lasting(target, "/_emulator/faults", faults, FAULTS["psp-timeouts"].lasts_s)
    return "30 % of captures answered after 3 s timeouts"


def psp_outage(target: Target) -> str:
    lasts = FAULTS["psp-outage"].lasts_s
    now = time.time()
    _lasting(
        target, "/_emulator/faults", {"outages": [{"start": now, "end": now + lasts, "mode": "reset"}]}, lasts
    )
    return f"every PSP connection reset for {lasts:g} s"


def webhook_chaos(target: Target) -> str:
    with httpx.Client(base_url=target.psp_url, timeout=10) as psp:
        config = psp.get("/_emulator/webhooks").raise_for_status().json()["config"]
        broken = {
            **config,
            "duplicate_rate": 0.3,
            "drop_rate": 0.3,
            "reorder_window": 4,
            "seed": target.rng.randrange(2**31),
        }
        psp.post("/_emulator/webhooks", json=broken).raise_for_status()
        time.sleep(FAULTS["webhook-chaos"].lasts_s)
        psp.post("/_emulator/webhooks", json=config).raise_for_status()
        psp.post("/_emulator/webhooks/flush", params={"timeout_s": 0}).raise_for_status()
    return "30 % of webhooks duplicated, 30 % dropped once, in shuffled groups of 4"


def _lasting(target: Target, path: str, body: dict[str, Any], lasts_s: float) -> None:
    with httpx.Client(base_url=target.psp_url, timeout=10) as psp:
        psp.post(path, json=body).raise_for_status()
        try:
            time.sleep(lasts_s)
        finally:
            psp.delete(path).raise_for_status()


# -- clients ----------------------------------------------------------------------------------------------


def retry_storm(target: Target, keys: int = 12, copies: int = 8) -> str:
    """Each of ``keys`` charges sent ``copies`` times at once, with its one key, as piled-up retries."""
    merchant = target.rng.choice(target.merchant_keys)
    sends = [(uuid.uuid4().hex, target.rng.randint(100, 10_000)) for _ in range(keys)]
    jobs = [(key, amount) for key, amount in sends for _ in range(copies)]
    # 409 is the answer to a copy that comes while its key is in flight: "retry later", as it should be
    _burst(target, merchant, jobs, "retry-storm", workers=keys * copies, answers=(200, 202, 402, 409))
    return f"{keys} charges sent {copies} times each at once"


def hot_merchant(target: Target, charges: int = 200, workers: int = 24) -> str:
    merchant = target.rng.choice(target.merchant_keys)
    jobs = [(uuid.uuid4().hex, target.rng.randint(100, 10_000)) for _ in range(charges)]
    _burst(target, merchant, jobs, "hot-merchant", workers=workers)
    return f"{charges} charges from one merchant, {workers} at a time"


def _burst(
    target: Target,
    api_key: str,
    jobs: list[tuple[str, int]],
    source: str,
    workers: int,
    answers: tuple[int, ...] = (200, 202, 402),
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    limits = httpx.Limits(max_connections=workers)
    with httpx.Client(base_url=target.base_url, headers=headers, timeout=10, limits=limits) as client:

        def charge(job: tuple[str, int]) -> None:
            key, amount = job
            target.record(send_charge(client, key, amount, source, answers))

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(charge, jobs))


INJECTORS: dict[str, Callable[[Target], str]] = {
    "node-lost": node_lost,
    "replica-killed": replica_killed,
    "ledger-writer-killed": ledger_writer_killed,
    "wallet-host-killed": wallet_host_killed,
    "redis-flushall": redis_flushall,
    "redis-restart": redis_restart,
    "postgres-restart": postgres_restart,
    "psp-timeouts": psp_timeouts,
    "psp-outage": psp_outage,
    "webhook-chaos": webhook_chaos,
    "retry-storm": retry_storm,
    "hot-merchant": hot_merchant,
}
assert INJECTORS.keys() == FAULTS.keys(), "every fault of the catalogue has its injector"
