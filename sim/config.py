"""Everything a simulation run depends on, in one frozen object: the load, the faults and the design.

Defaults follow what the real stack measured (``bench/RESULTS.md``): a charge costs ~8 ms of service time
on two cores and the PSP answers in tens of milliseconds; an actor call costs ~1.5 ms of CPU whatever it
carries; the Stripe SDK retries twice; the recovery janitor sweeps every 30 s for work untouched for 120 s.
Times are in seconds of simulated time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from payray.charge import AUTHORIZATION_DAYS
from payray.routing import PSPS, checked_priorities
from payray.slots import DEFAULT_SLOTS

IdempotencyMode = Literal["full", "redis_only", "off"]
#: an authorization's life in simulated seconds: then the service's janitor cancels it, the PSP expires it
AUTHORIZATION_S = AUTHORIZATION_DAYS * 86_400.0


@dataclass(frozen=True)
class Load:
    charges: int = 2_000
    #: orders per simulated second (Poisson arrivals)
    rate: float = 100.0
    merchants: int = 8
    #: a spike: ``spike_factor`` times the rate between ``spike_at`` and ``spike_at + spike_s`` seconds
    spike_factor: float = 1.0
    spike_at: float = 0.0
    spike_s: float = 0.0
    #: the share of succeeded charges whose customer later asks for a refund (half of them in full)
    refund_share: float = 0.1
    refund_after_s: float = 2.0
    #: the share of orders that only authorize (``capture_method=manual``); of those, the merchant cancels
    #: ``cancel_share``, lets ``expire_share`` sit until the 7-day expiry, tries to capture ``late_share``
    #: around the expiry (within one expiry sweep of it), and captures the rest ``capture_after_s`` later on
    #: average, ``partial_share`` of them in part
    manual_share: float = 0.0
    cancel_share: float = 0.15
    expire_share: float = 0.1
    late_share: float = 0.05
    partial_share: float = 0.5
    capture_after_s: float = 1.0


@dataclass(frozen=True)
class Client:
    #: the client hangs up after this long; Ray Serve then cancels its request wherever it is
    timeout_s: float = 10.0
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_cap_s: float = 8.0
    #: retry with the same Idempotency-Key (the contract) or a fresh one (a client bug)
    same_key: bool = True
    #: the share of clients that never retry: whatever they were told, recovery has to finish their charge
    abandon_rate: float = 0.0


@dataclass(frozen=True)
class Psp:
    latency_s: float = 0.03
    latency_sigma: float = 0.5
    decline_rate: float = 0.05
    #: the PSP answers 5xx without doing anything
    error_rate: float = 0.0
    #: the PSP captures, then the reply is lost (a timeout after capture)
    lost_reply_rate: float = 0.0
    #: outages: ``[start, end)`` windows in which every call fails
    outages: tuple[tuple[float, float], ...] = ()
    #: ``[start, end)`` windows in which the PSP refuses connections: nothing is sent, a definite failure
    #: (``not_sent``) that routing may cascade to the next PSP
    unreachable: tuple[tuple[float, float], ...] = ()
    #: the share of captures the PSP answers with a refusal (a 4xx, a definite failure) and yet makes, up to
    #: ``late_success_s`` later; automatic captures only
    late_success_rate: float = 0.0
    late_success_s: float = 3.0
    #: the PSP refuses a refund (the card is closed, say): payray gives the merchant its money back
    refund_refusal_rate: float = 0.0
    #: the share of captures someone refunds at the PSP directly (its dashboard): payray learns of it only
    #: from the ``charge.refunded`` webhook
    external_refund_rate: float = 0.0
    sdk_retries: int = 2
    call_timeout_s: float = 10.0
    #: an authorization the PSP lets go on its own, this long after it made it
    authorization_expiry_s: float = AUTHORIZATION_S


@dataclass(frozen=True)
class Routing:
    """The merchants' PSPs in the order to try them (``payray.routing``), and each PSP's circuit breaker."""

    priorities: tuple[str, ...] = ("stripe",)
    breaker_threshold: int = 5
    breaker_open_s: float = 5.0
    breaker_slow_s: float = 2.0

    def __post_init__(self) -> None:
        checked_priorities(self.priorities)


@dataclass(frozen=True)
class Database:
    commit_s: float = 0.0015
    pool: int = 8
    #: restarts: ``[start, end)`` windows in which every statement fails
    restarts: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Service:
    #: API replicas (``PAYRAY_API_REPLICAS``); each does one request's CPU work (``work_s``) at a time
    replicas: int = 2
    work_s: float = 0.004
    #: times at which the busiest replica dies, cutting every request it serves; Serve replaces it after
    #: ``replica_restart_s``
    replica_crashes: tuple[float, ...] = ()
    replica_restart_s: float = 5.0
    #: the replica dies between the PSP's capture and the ledger posting for this share of charges
    crash_after_capture_rate: float = 0.0
    #: the ledger refuses a posting (a bug, a constraint): the charge must be compensated
    ledger_failure_rate: float = 0.0
    #: the fast idempotency store (Redis) loses every key at these times
    key_losses: tuple[float, ...] = ()


@dataclass(frozen=True)
class WalletHosts:
    """The wallet hosts (``PAYRAY_WALLET_HOSTS``): each holds its slots' wallets and writes their postings.

    Defaults as measured on 2 cores (``bench/RESULTS.md``): one host; its CPU per call, 1.5 ms fixed (an
    actor call, ``bench.ray_calls``: 1.4-2.0 ms) and 0.45 ms per posting it carries (``bench.merchants``: 0.7
    ms per charge at about six postings a call); and the writer's 2 ms group-commit window."""

    hosts: int = 1
    slots: int = DEFAULT_SLOTS
    #: a host's CPU per call (one call at a time): ``call_s`` whatever it carries, ``posting_s`` per posting
    call_s: float = 0.0015
    posting_s: float = 0.00045
    #: postings that arrive within this long of a batch's first, or while a batch commits, commit together
    group_commit_s: float = 0.002
    #: wallets a host keeps in memory, and how long an idle one stays (``payray.passivation``)
    wallet_cache: int = 100_000
    wallet_idle_s: float = 600.0
    #: times at which the busiest live host dies; Ray starts it again ``restart_s`` later and retries the
    #: calls it had in flight there
    crashes: tuple[float, ...] = ()
    restart_s: float = 1.0
    #: the dead host's old copy goes on working this long beside its new one (Ray does not promise a single
    #: live copy during a restart): both write the same postings, and Postgres arbitrates
    duplicate_s: float = 0.0


@dataclass(frozen=True)
class Webhooks:
    delay_s: float = 0.5
    duplicate_rate: float = 0.0
    drop_rate: float = 0.0
    #: deliveries spread over up to this many extra seconds, so they arrive out of order
    reorder_s: float = 0.0


@dataclass(frozen=True)
class Recovery:
    interval_s: float = 30.0
    grace_s: float = 120.0
    #: the janitor looks for authorizations older than ``AUTHORIZATION_DAYS`` this often, and cancels them
    authorization_sweep_s: float = 3_600.0


@dataclass(frozen=True)
class Reconciliation:
    #: shares of the PSP's report rows drifted: left out, or with another amount
    missing_rate: float = 0.0
    amount_mismatch_rate: float = 0.0
    #: rows the PSP reports that no one made
    unknown_rows: int = 0


@dataclass(frozen=True)
class Design:
    """The components a swap replaces, to show why the design is what it is."""

    idempotency: IdempotencyMode = "full"
    psp_idempotency_key: bool = True
    compensation: bool = True
    #: the ledger ignores a posting's (kind, reference) when it is written again (a retried host call)
    idempotent_postings: bool = True
    #: an attempt that failed definitely at a PSP the payment then left is watched (webhook, lookup) for a
    #: late success, which is given back; off, such a capture stays where it landed
    watch_left_attempts: bool = True
    #: a definite failure of an attempt resumed from an earlier request fails over too, as if no earlier call
    #: of it could have reached the PSP
    resumed_failures_cascade: bool = False


@dataclass(frozen=True)
class SimConfig:
    seed: int = 1
    load: Load = field(default_factory=Load)
    client: Client = field(default_factory=Client)
    #: Stripe's behaviour (the one PSP of a single-PSP run), and Braintree's
    psp: Psp = field(default_factory=Psp)
    braintree: Psp = field(default_factory=Psp)
    routing: Routing = field(default_factory=Routing)
    database: Database = field(default_factory=Database)
    service: Service = field(default_factory=Service)
    hosts: WalletHosts = field(default_factory=WalletHosts)
    webhooks: Webhooks = field(default_factory=Webhooks)
    recovery: Recovery = field(default_factory=Recovery)
    reconciliation: Reconciliation = field(default_factory=Reconciliation)
    design: Design = field(default_factory=Design)
    #: after the last arrival, faults stop and the run goes on this long: every charge must finish
    quiet_s: float = 600.0

    def with_(self, **parts: Any) -> SimConfig:
        """A copy with whole parts replaced, or fields of a part: ``with_(psp={"decline_rate": 0.1})``."""
        changes = {}
        for name, value in parts.items():
            current = getattr(self, name)
            changes[name] = replace(current, **value) if isinstance(value, dict) else value
        return replace(self, **changes)

    def psp_of(self, name: str) -> Psp:
        """The config of the PSP named so (``payray.routing.PSPS``)."""
        if name not in PSPS:
            raise ValueError(f"unknown PSP {name!r}")
        return self.braintree if name == "braintree" else self.psp

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
