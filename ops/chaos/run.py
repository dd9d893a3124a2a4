"""A chaos run: the multi-node stack up on its own embedded Postgres and Redis (the faults restart them),
Locust load, probes, the fault schedule, a quiet phase, then the checks.

The probes are one charge every ``PROBE_EVERY_S`` from merchants spread over every wallet host: they time
each recovery (``measure.recovered_at``). Locust logs every request its users send, and the bursts theirs,
so "nothing lost" can be checked request by request against the ledger.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg

from loadtest.run import LoadRun
from ops.chaos.clients import send_charge
from ops.chaos.measure import (
    FaultResult,
    Injection,
    Request,
    fault_result,
    keys_answered_twice,
    succeeded,
    timeline,
)
from ops.chaos.plan import Planned, run_time_s, schedule
from ops.cluster import LocalCluster
from ops.loopback import free_port
from ops.stack import EdgeTls, Stack, StackInfo, haproxy_available
from ops.tls import CA_FILE, trust_stack_ca
from payray.settings import Settings
from payray.slots import SlotMap

if TYPE_CHECKING:
    from ops.chaos.inject import Target

PROBE_EVERY_S = 0.1
PROBES_PER_HOST = 2
#: The quiet phase's limit for the janitor to finish every payment left unknown
SETTLE_TIMEOUT_S = 90
UNFINISHED = (
    "SELECT count(*) FROM payments WHERE state NOT IN ('succeeded', 'declined', 'failed', 'canceled')"
)
BOOKED = "SELECT external_ref FROM ledger_transactions WHERE kind = %s AND external_ref = ANY(%s)"


@dataclass(frozen=True)
class ChaosOptions:
    faults: list[str]
    seed: int = 1
    nodes: int = 2
    users: int = 12
    merchants: int = 8
    slot_s: float = 20.0
    warmup_s: float = 8.0
    rounds: int = 1
    quiet_s: float = 5.0
    #: HTTPS at the API and the PSP, Ray's traffic over mutual TLS
    tls: bool = False


@dataclass
class ChaosRun:
    """What a run found. ``violations`` empty and every fault recovered: the run passed."""

    options: ChaosOptions
    planned: list[Planned]
    results: list[FaultResult] = field(default_factory=list)
    invariants: dict[str, Any] = field(default_factory=dict)
    reconciliation: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)
    #: every probe: seconds into the load when sent, seconds to its answer, its status
    probes: list[tuple[float, float, int]] = field(default_factory=list)
    #: where the run kept its files: Locust's CSV and every request (``requests.jsonl``)
    home: str = ""
    #: admin calls of the quiet phase that had to be tried again, and why
    notes: list[str] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations and all(r.recovered for r in self.results)


def run_chaos(options: ChaosOptions, say: Callable[[str], None] = print) -> ChaosRun:
    planned = schedule(options.faults, options.seed, options.slot_s, options.warmup_s, options.rounds)
    load_s = run_time_s(options.faults, options.slot_s, options.warmup_s, options.rounds)
    home = Path(tempfile.mkdtemp(prefix="payray-chaos-"))
    wallet_hosts = max(2, options.nodes)
    # its own Postgres and Redis, whatever the environment says: the faults restart them
    settings = Settings.from_env().with_(
        home=home, database_url=None, redis_url=None, psp_api_key=None, psp_api_base=None,
        ray_address=None, api_replicas=options.nodes, api_replicas_per_node=1, wallet_hosts=wallet_hosts,
    )  # fmt: skip
    cluster = LocalCluster(nodes=options.nodes, say=say)
    tls = EdgeTls() if options.tls else None
    stack = Stack(settings, port=free_port(), haproxy=haproxy_available(), say=say, cluster=cluster, tls=tls)
    run = ChaosRun(options, planned, home=str(home))
    info = stack.start()
    if tls is not None:  # the probes, Locust and the checks verify the stack's certificates
        trust_stack_ca(home / "tls" / CA_FILE)
    try:
        # Ray reads the cluster's address and token when it is imported: the faults import it once the stack
        # has set them
        from ops.chaos.inject import Target

        assert stack.postgres is not None and stack.redis is not None
        say(f"stack up at {info.base_url}: {load_s:.0f} s of load, {len(planned)} faults")
        log: list[Request] = []
        lock = threading.Lock()

        def record(request: Request) -> None:
            with lock:
                log.append(request)

        probes = _merchants(info, SlotMap(wallet_hosts, settings.wallet_slots), PROBES_PER_HOST)
        bursts = [_merchant(info, f"chaos-burst-{i}")[1] for i in range(2)]
        target = Target(
            cluster, stack.postgres, stack.redis, info.redis_url, info.base_url, info.psp_api_base or "",
            settings.ray_namespace, wallet_hosts, bursts, random.Random(options.seed), record,
        )  # fmt: skip
        run.load, load_log, origin, injections, samples = _under_load(
            options, info, target, planned, probes, load_s, home, say
        )
        everything = [*log, *load_log]
        quiet_end = time.time()
        bounds = [i.at for i in injections[1:]] + [quiet_end]
        run.results = [
            fault_result(i, everything, until, origin) for i, until in zip(injections, bounds, strict=True)
        ]
        run.timeline = timeline(everything, origin)
        run.probes = [
            (round(p.sent - origin, 3), round(p.latency_s, 3), p.status) for p in log if p.source == "probe"
        ]
        run.samples = samples
        say("quiet phase: the janitor, the invariants, the day's reconciliation")
        _check(run, info, everything, target)
    finally:
        stack.stop()
        for data in ("postgres", "redis", "psp", "haproxy"):  # what stays: the requests, Locust's CSV
            shutil.rmtree(home / data, ignore_errors=True)
    return run


def _under_load(
    options: ChaosOptions,
    info: StackInfo,
    target: Target,
    planned: list[Planned],
    probes: list[str],
    load_s: float,
    home: Path,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[Request], float, list[Injection], list[dict[str, float]]]:
    """Locust for ``load_s``, the probes and the faults on their schedule; the probes go on through the
    quiet phase so the last fault's recovery is timed too."""
    from ops.chaos.inject import inject

    request_log = home / "requests.jsonl"
    load = LoadRun(
        info.base_url, options.users, float(options.users), int(load_s), "steady", "none", options.merchants,
        csv_prefix=str(home / "locust"),
    )  # fmt: skip
    env = {**os.environ, "PAYRAY_ADMIN_KEY": info.admin_key, "PAYRAY_PSP_URL": info.psp_api_base or ""}
    command = [
        *load.command(),
        "--request-log",
        str(request_log),
        "--max-fail-ratio",
        "1",
        "--max-retries",
        "6",
    ]
    locust = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    injections: list[Injection] = []
    samples: list[dict[str, float]] = []
    try:
        while not (request_log.exists() and request_log.stat().st_size) and locust.poll() is None:
            time.sleep(0.05)
        origin = time.time()
        threads = [
            threading.Thread(target=_probe, args=(info, probes, target.record, stop), daemon=True),
            threading.Thread(target=_sample, args=(info, origin, samples, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        for plan in planned:
            time.sleep(max(0.0, origin + plan.at_s - time.time()))
            at = time.time()
            say(f"{at - origin:7.1f} s  {plan.fault}")
            detail, error = "", None
            try:
                detail = inject(plan.fault, target)
            except Exception as exc:  # a fault that cannot be injected fails the run, not the runner
                error = f"{type(exc).__name__}: {exc}"
            injections.append(Injection(plan.fault, at, time.time(), detail, error))
        _, errors = locust.communicate(timeout=load_s + 300)
        target.until_node_joined()
        time.sleep(options.quiet_s)
    finally:
        stop.set()
        if locust.poll() is None:
            locust.kill()
    lines = request_log.read_text().splitlines() if request_log.exists() else []
    load_log = [Request.from_json(json.loads(line)) for line in lines if line.strip()]
    summary = {
        "locust_exit": locust.returncode,
        "requests": len(load_log),
        "stderr_tail": (errors or "")[-600:],
    }
    return summary, load_log, origin, injections, samples


def _probe(
    info: StackInfo, keys: list[str], record: Callable[[Request], None], stop: threading.Event
) -> None:
    clients = [
        httpx.Client(base_url=info.base_url, headers={"Authorization": f"Bearer {k}"}, timeout=5)
        for k in keys
    ]
    try:
        while not stop.is_set():
            for client in clients:
                record(send_charge(client, uuid.uuid4().hex, random.randint(100, 5000), "probe"))
                if stop.wait(PROBE_EVERY_S):
                    return
    finally:
        for client in clients:
            client.close()


def _sample(info: StackInfo, origin: float, samples: list[dict[str, float]], stop: threading.Event) -> None:
    """payray's own figures each second: payments not finished, ledger transactions, PSP captures."""
    while not stop.wait(1.0):
        try:
            with psycopg.connect(info.database_url, autocommit=True, connect_timeout=2) as conn:
                unfinished = conn.execute(UNFINISHED).fetchone()
                booked = conn.execute("SELECT count(*) FROM ledger_transactions").fetchone()
            psp = httpx.get(f"{info.psp_api_base}/_emulator/stats", timeout=2).json()
        except (psycopg.Error, httpx.HTTPError):
            continue  # Postgres is restarting: a gap in the chart
        assert unfinished is not None and booked is not None
        samples.append(
            {"t": round(time.time() - origin, 2), "unfinished_payments": unfinished[0],
             "ledger_transactions": booked[0], "psp_captures": psp["captures"]}
        )  # fmt: skip


def _check(run: ChaosRun, info: StackInfo, requests: list[Request], target: Target) -> None:
    """The quiet phase: every payment finished by the janitor, then the invariants, the day's
    reconciliation, the invariants again, and nothing a client saw succeed missing from the ledger."""
    with httpx.Client(base_url=info.base_url, timeout=120) as admin:
        admin.headers["Authorization"] = f"Bearer {info.admin_key}"
        with httpx.Client(base_url=target.psp_url, timeout=90) as psp:
            psp.delete("/_emulator/faults").raise_for_status()
            psp.post("/_emulator/webhooks/flush", params={"timeout_s": 60}).raise_for_status()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            _admin_call(admin, "POST", "/v1/admin/recovery/sweep", run.notes, {"grace_s": 0})
            with psycopg.connect(info.database_url, autocommit=True) as conn:
                left = conn.execute(UNFINISHED).fetchone()
            if not left or not left[0] or time.monotonic() > deadline:
                break
            time.sleep(1)
        if left and left[0]:
            run.violations.append(f"{left[0]} payments still unfinished {SETTLE_TIMEOUT_S} s after the load")
        today = datetime.now(UTC).date().isoformat()
        recon = _admin_call(admin, "POST", "/v1/reconciliation/runs", run.notes, {"date": today}) or {}
        run.reconciliation = {k: recon.get(k) for k in ("id", "status", "psp_rows", "ledger_rows", "matched")}
        run.reconciliation["discrepancies"] = recon.get("discrepancies", {})
        run.invariants = _admin_call(admin, "GET", "/v1/admin/invariants", run.notes) or {}
    if not run.invariants:
        run.violations.append("the invariants could not be read: " + "; ".join(run.notes[-3:]))
    if not recon:
        run.violations.append("the day's reconciliation never answered: " + "; ".join(run.notes[-3:]))
    elif recon.get("status") != "succeeded":
        run.violations.append(f"the day's reconciliation {recon.get('status')}: {recon.get('error')}")
    if sum((recon.get("discrepancies") or {}).values()):
        run.violations.append(f"reconciliation found discrepancies: {recon['discrepancies']}")
    for name, section in run.invariants.items():
        if isinstance(section, dict) and not section.get("ok", True):
            run.violations.append(f"invariant {name} violated: {json.dumps(section)[:300]}")
    for key in keys_answered_twice(requests):
        run.violations.append(f"idempotency key {key} answered with two different objects")
    with psycopg.connect(info.database_url, autocommit=True) as conn:
        for op, kind in (("POST /v1/charges", "capture"), ("POST /v1/refunds", "refund")):
            seen = succeeded(requests, op)
            booked = {row[0] for row in conn.execute(BOOKED, (kind, sorted(seen)))}
            run.load[f"{kind}s_seen_succeeded"] = len(seen)
            for missing in sorted(seen - booked)[:20]:
                run.violations.append(f"{missing}: a client saw it succeed and the ledger has no {kind}")


def _admin_call(
    admin: httpx.Client, method: str, path: str, notes: list[str], body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """An admin route, tried up to three times as an operator would (each is safe to repeat); every failed
    try is noted. None: it never answered 200."""
    for attempt in range(1, 4):
        try:
            answer = admin.request(method, path, json=body)
        except httpx.HTTPError as exc:
            notes.append(f"{method} {path} try {attempt}: {type(exc).__name__}: {exc}")
        else:
            if answer.status_code == 200:
                return dict(answer.json())
            notes.append(f"{method} {path} try {attempt}: {answer.status_code} {answer.text[:300]}")
        time.sleep(2 * attempt)
    return None


def _merchants(info: StackInfo, slots: SlotMap, per_host: int) -> list[str]:
    """API keys of merchants chosen so that every wallet host holds ``per_host`` of them."""
    keys: list[str] = []
    held = [0] * slots.hosts
    while min(held) < per_host:
        merchant_id, key = _merchant(info, f"chaos-probe-{len(keys)}")
        host = slots.host_of(merchant_id)
        if held[host] < per_host:
            held[host] += 1
            keys.append(key)
    return keys


def _merchant(info: StackInfo, name: str) -> tuple[str, str]:
    answer = httpx.post(
        f"{info.base_url}/v1/merchants",
        json={"name": name},
        headers={"Authorization": f"Bearer {info.admin_key}"},
        timeout=60,
    ).raise_for_status()
    body = answer.json()
    return body["id"], body["api_key"]
