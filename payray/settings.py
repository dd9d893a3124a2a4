"""Configuration, read once from ``PAYRAY_*`` (and Stripe/Ray) environment variables and passed down."""

from __future__ import annotations

import json
import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from payray.slots import DEFAULT_SLOTS
from payray.webhooks import DeliveryPolicy

DEFAULT_HOME = ".payray"
#: What ``payray up`` writes under PAYRAY_HOME about the stack it runs: its URL, admin key and PSP URL.
STACK_FILE = "stack.json"


def running_stack(home: Path | None = None) -> dict[str, str]:
    """What `payray up` left under `home` (default: PAYRAY_HOME) about the stack it runs; empty if none."""
    path = (home or Path(os.environ.get("PAYRAY_HOME", DEFAULT_HOME))) / STACK_FILE
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    return stored


def default_wallet_hosts() -> int:
    """One wallet host per two cores. A host spends under a millisecond of CPU per charge, so one keeps up
    with all a 2-core machine's other parts can do; each host more adds its own actor calls and splits the
    batches (on 2 cores, 10,000 merchants kept 0.99 of one merchant's rate with one host, 0.77 with two:
    ``bench/RESULTS.md``)."""
    return max(1, (os.cpu_count() or 2) // 2)


#: Fields whose values are credentials: shown as ``***`` by ``repr`` (and so in any log of the settings).
SECRETS = frozenset({"psp_api_key", "admin_key", "stripe_webhook_secrets", "braintree_private_key"})


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything the service needs to know about its surroundings.

    ``None`` for a URL means "not configured": ``payray up`` then starts the embedded default (for the PSP,
    the emulator, and fills in its key and base). Its ``repr`` leaves out keys, secrets and URL passwords.
    """

    home: Path = Path(".payray")
    database_url: str | None = None
    redis_url: str | None = None
    #: the PSP's API key and base URL (``STRIPE_API_KEY``, ``STRIPE_API_BASE``; a base of None is Stripe's)
    psp_api_key: str | None = None
    psp_api_base: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    #: Braintree, the second PSP (``BRAINTREE_*``): its merchant id and API key pair, and its environment,
    #: ``sandbox``, ``production`` or a base URL (the emulator's); without a merchant id, no Braintree
    braintree_merchant_id: str | None = None
    braintree_public_key: str | None = None
    braintree_private_key: str | None = None
    braintree_environment: str = "sandbox"
    ray_address: str | None = None
    admin_key: str | None = None
    ray_namespace: str = "payray"
    #: the wallet hosts (each also writes its merchants' ledger postings), the slots merchants hash to, and
    #: how many wallets each host keeps in memory and for how long an idle one stays
    wallet_hosts: int = field(default_factory=default_wallet_hosts)
    wallet_slots: int = DEFAULT_SLOTS
    wallet_cache_size: int = 100_000
    wallet_idle_s: float = 600.0
    api_replicas: int = 1
    #: at most this many API replicas on one Ray node (0: no limit), so a lost node leaves replicas elsewhere
    api_replicas_per_node: int = 0
    fee_bps: int = 290
    psp_timeout_s: float = 10.0
    psp_max_retries: int = 2
    idempotency_ttl_ms: int = 86_400_000
    in_flight_lease_ms: int = 60_000
    db_pool_size: int = 8
    #: how often the recovery sweeper sweeps, and how long a row must sit untouched before it counts as
    #: abandoned (longer than any live request waits on the PSP and the ledger)
    recovery_interval_s: float = 30.0
    recovery_grace_s: float = 120.0
    #: when (UTC, "HH:MM") the scheduler reconciles the day before
    reconciliation_at: str = "02:15"
    #: rate limits (token buckets in Redis): each merchant key's requests a second and the burst above it
    #: (Stripe allows 100 a second in live mode), and each source address's failed authentications; a rate
    #: of 0 turns that limit off
    key_rate_per_s: float = 100.0
    key_burst: int = 100
    failed_auth_rate_per_s: float = 1.0
    failed_auth_burst: int = 20
    #: webhooks to merchants: each request's whole time, how many at once, and the retries' first wait, the
    #: longest wait and how long a delivery is retried (Stripe's: 3 days)
    webhook_timeout_s: float = 10.0
    webhook_concurrency: int = 32
    webhook_retry_base_s: float = 60.0
    webhook_retry_cap_s: float = 6 * 3600.0
    webhook_retry_window_s: float = 3 * 86400.0
    webhook_loopback_only: bool = False
    #: a PEM file of certificate authorities trusted for outbound HTTPS (the PSP, its report files, webhooks
    #: to merchants) besides the defaults, which it adds to and never replaces
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip())
        return cls(
            home=Path(env.get("PAYRAY_HOME", DEFAULT_HOME)),
            database_url=env.get("PAYRAY_DATABASE_URL") or None,
            redis_url=env.get("PAYRAY_REDIS_URL") or None,
            psp_api_key=env.get("STRIPE_API_KEY") or None,
            psp_api_base=env.get("STRIPE_API_BASE") or None,
            stripe_webhook_secrets=secrets,
            **_braintree(env),
            ray_address=env.get("RAY_ADDRESS") or None,
            admin_key=env.get("PAYRAY_ADMIN_KEY") or None,
            ray_namespace=env.get("PAYRAY_RAY_NAMESPACE", "payray"),
            wallet_hosts=_positive_int(env, "PAYRAY_WALLET_HOSTS", default_wallet_hosts()),
            wallet_slots=_positive_int(env, "PAYRAY_WALLET_SLOTS", DEFAULT_SLOTS),
            wallet_cache_size=_positive_int(env, "PAYRAY_WALLET_CACHE", 100_000),
            wallet_idle_s=float(_positive_int(env, "PAYRAY_WALLET_IDLE_S", 600)),
            api_replicas=_positive_int(env, "PAYRAY_API_REPLICAS", 1),
            api_replicas_per_node=_positive_int(env, "PAYRAY_API_REPLICAS_PER_NODE", 0, allow_zero=True),
            fee_bps=_positive_int(env, "PAYRAY_FEE_BPS", 290, allow_zero=True),
            psp_timeout_s=float(env.get("PAYRAY_PSP_TIMEOUT_S", "10")),
            psp_max_retries=_positive_int(env, "PAYRAY_PSP_MAX_RETRIES", 2, allow_zero=True),
            db_pool_size=_positive_int(env, "PAYRAY_DB_POOL_SIZE", 8),
            recovery_interval_s=float(env.get("PAYRAY_RECOVERY_INTERVAL_S", "30")),
            recovery_grace_s=float(env.get("PAYRAY_RECOVERY_GRACE_S", "120")),
            reconciliation_at=_utc_time_of_day(env, "PAYRAY_RECON_AT", "02:15"),
            key_rate_per_s=_rate(env, "PAYRAY_KEY_RATE_PER_S", 100.0),
            key_burst=_positive_int(env, "PAYRAY_KEY_BURST", 100),
            failed_auth_rate_per_s=_rate(env, "PAYRAY_FAILED_AUTH_RATE_PER_S", 1.0),
            failed_auth_burst=_positive_int(env, "PAYRAY_FAILED_AUTH_BURST", 20),
            webhook_timeout_s=_seconds(env, "PAYRAY_WEBHOOK_TIMEOUT_S", 10.0),
            webhook_concurrency=_positive_int(env, "PAYRAY_WEBHOOK_CONCURRENCY", 32),
            webhook_retry_base_s=_seconds(env, "PAYRAY_WEBHOOK_RETRY_BASE_S", 60.0),
            webhook_retry_cap_s=_seconds(env, "PAYRAY_WEBHOOK_RETRY_CAP_S", 6 * 3600.0),
            webhook_retry_window_s=_seconds(env, "PAYRAY_WEBHOOK_RETRY_WINDOW_S", 3 * 86400.0),
            webhook_loopback_only=env.get("PAYRAY_WEBHOOK_LOOPBACK_ONLY", "") in ("1", "true"),
            ca_bundle=_ca_bundle(env, "PAYRAY_CA_BUNDLE"),
        )

    def webhook_delivery(self) -> DeliveryPolicy:
        """How the notifier delivers events to merchants' webhook endpoints."""
        return DeliveryPolicy(
            timeout_s=self.webhook_timeout_s,
            concurrency=self.webhook_concurrency,
            retry_base_s=self.webhook_retry_base_s,
            retry_cap_s=self.webhook_retry_cap_s,
            window_s=self.webhook_retry_window_s,
            poll_s=min(1.0, self.webhook_retry_base_s),
            loopback_only=self.webhook_loopback_only,
            ca_bundle=self.ca_bundle,
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = (f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"Settings({', '.join(shown)})"


def _shown(name: str, value: object) -> object:
    """A field's value as ``repr`` may show it: credentials masked, a URL without its password."""
    if name in SECRETS and value:
        return "***"
    if name.endswith("_url") and isinstance(value, str):
        parts = urlsplit(value)
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
            netloc += f":{parts.port}" if parts.port is not None else ""
            return urlunsplit(parts._replace(netloc=netloc))
    return value


def _braintree(env: Mapping[str, str]) -> dict[str, Any]:
    """Braintree's settings: a merchant id takes both keys of its pair."""
    merchant = env.get("BRAINTREE_MERCHANT_ID") or None
    public, private = env.get("BRAINTREE_PUBLIC_KEY") or None, env.get("BRAINTREE_PRIVATE_KEY") or None
    if merchant and not (public and private):
        raise ValueError("BRAINTREE_MERCHANT_ID takes BRAINTREE_PUBLIC_KEY and BRAINTREE_PRIVATE_KEY")
    return {
        "braintree_merchant_id": merchant,
        "braintree_public_key": public,
        "braintree_private_key": private,
        "braintree_environment": env.get("BRAINTREE_ENVIRONMENT") or "sandbox",
    }


def _positive_int(env: Mapping[str, str], name: str, default: int, *, allow_zero: bool = False) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def _rate(env: Mapping[str, str], name: str, default: float) -> float:
    """Requests a second: a finite number >= 0 (0 turns the limit off)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of requests a second, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 (0 turns the limit off), got {raw!r}")
    return value


def _utc_time_of_day(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name) or default
    hours, sep, minutes = raw.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"{name} must be a UTC time of day HH:MM, got {raw!r}")
    return f"{int(hours):02d}:{int(minutes):02d}"


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds: a finite number > 0."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {raw!r}")
    return value


def _ca_bundle(env: Mapping[str, str], name: str) -> str | None:
    """A PEM file of CA certificates, checked now so a wrong path fails at start, not at the first request."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    must = f"{name} must name a PEM file of CA certificates, got {raw!r}"
    if not Path(raw).is_file():
        raise ValueError(f"{must}: {'not a file' if Path(raw).exists() else 'no such file'}")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # an empty store: it counts only what the file adds
    try:
        probe.load_verify_locations(cafile=raw)
    except ssl.SSLError as exc:
        raise ValueError(f"{must}: it holds no readable PEM certificate ({exc.reason})") from None
    except OSError as exc:
        raise ValueError(f"{must}: {exc.strerror or exc}") from None
    if probe.cert_store_stats()["x509"] == 0:
        raise ValueError(f"{must}: it holds no PEM certificate")
    return raw
