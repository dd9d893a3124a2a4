"""Named scenarios (faults the full design must survive) and component swaps (designs that must fail).

A scenario is a change to the default config; each keeps every invariant with the full design. A swap
replaces one part of the design on top of the faults that part exists for, and names the invariant it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.config import SimConfig

Changes = dict[str, dict[str, Any]]
#: Redis loses every key early and then again later, so short and long runs both meet it.
KEY_LOSSES = (1.0, 2.5, 4.0, 9.0, 14.0)
#: wallet hosts dying under load, with refunds (debits) in flight beside the captures
HOST_CRASHES: Changes = {
    "hosts": {"crashes": (0.5, 1.5, 2.5, 3.5, 8.0, 14.0)},
    "load": {"rate": 200.0, "refund_share": 0.3, "refund_after_s": 0.5},
    "psp": {"lost_reply_rate": 0.02},
}
#: Stripe first, Braintree when Stripe fails definitely or its breaker is open
FAILOVER = {"priorities": ("stripe", "braintree")}
#: Stripe answers 5 % of captures with a refusal and makes them up to 3 s later
LATE_SUCCESSES: Changes = {"routing": FAILOVER, "psp": {"late_success_rate": 0.05}}


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    changes: Changes
    #: for a swap: the invariant it is meant to break
    breaks: str | None = None

    def config(self, seed: int = 1, charges: int | None = None) -> SimConfig:
        config = SimConfig(seed=seed).with_(**self.changes)
        return config if charges is None else config.with_(load={"charges": charges})


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("happy_path", "no faults: the baseline", {}),
        Scenario(
            "psp_timeouts",
            "replies lost (5 %), 5xx (20 %), refunds refused (10 %): the SDK retries, same key",
            {"psp": {"lost_reply_rate": 0.05, "error_rate": 0.2, "refund_refusal_rate": 0.1}},
        ),
        Scenario(
            "retry_storm",
            "clients time out after 50 ms, before the PSP answers, and retry fast and often",
            {
                "client": {"timeout_s": 0.05, "max_retries": 8, "backoff_s": 0.02},
                "psp": {"lost_reply_rate": 0.02},
            },
        ),
        Scenario(
            "idempotency_store_loss",
            "Redis loses every key three times while clients retry: Postgres is the backstop",
            {"service": {"key_losses": KEY_LOSSES}, "client": {"timeout_s": 0.05}},
        ),
        Scenario(
            "database_restart",
            "Postgres restarts twice: requests fail with 503 and are retried; unfinished work is recovered",
            {"database": {"restarts": ((1.0, 2.5), (6.0, 6.5))}},
        ),
        Scenario(
            "crash_between_psp_and_ledger",
            "the replica dies after 2 % of captures, before the ledger: the janitor finds them at the PSP",
            {"service": {"crash_after_capture_rate": 0.02}},
        ),
        Scenario(
            "replica_crash",
            "an API replica dies twice, cutting every request it serves (clients see 502s and retry); Serve "
            "replaces it 5 s later",
            {"service": {"replica_crashes": (1.0, 7.0)}, "psp": {"lost_reply_rate": 0.02}},
        ),
        Scenario(
            "host_crash",
            "the busiest wallet host dies every second or so under load: Ray starts it again 1 s later and "
            "retries its calls there (a batch caught committing may have committed); wallets reload from the "
            "ledger",
            HOST_CRASHES,
        ),
        Scenario(
            "duplicate_host",
            "a dead wallet host's old copy goes on writing for 0.5 s beside its new one: Postgres arbitrates "
            "(idempotent postings, guarded transitions, require_funds on debits)",
            {**HOST_CRASHES, "hosts": {**HOST_CRASHES["hosts"], "duplicate_s": 0.5}},
        ),
        Scenario(
            "dashboard_refunds",
            "3 % of captures refunded at the PSP by hand: payray books them from the charge.refunded webhook",
            {"psp": {"external_refund_rate": 0.03}},
        ),
        Scenario(
            "ledger_failures",
            "the ledger refuses 2 % of postings: those charges are refunded at the PSP and booked both ways",
            {"service": {"ledger_failure_rate": 0.02}},
        ),
        Scenario(
            "psp_outage",
            "the PSP is down for 2 s; 30 % of clients never retry: recovery asks the PSP and finishes them",
            {"psp": {"outages": ((1.0, 3.0),)}, "client": {"abandon_rate": 0.3}},
        ),
        Scenario(
            "webhook_chaos",
            "replies lost (10 %) and webhooks duplicated (30 %), dropped (20 %) and reordered over 5 s",
            {
                "psp": {"lost_reply_rate": 0.1},
                "webhooks": {"duplicate_rate": 0.3, "drop_rate": 0.2, "reorder_s": 5.0},
            },
        ),
        Scenario(
            "recon_drift",
            "the PSP's report drifts (1 % missing, 1 % wrong amounts, 5 unknown rows): each is named",
            {"reconciliation": {"missing_rate": 0.01, "amount_mismatch_rate": 0.01, "unknown_rows": 5}},
        ),
        Scenario(
            "manual_capture",
            "half the orders only authorize (a hold); merchants capture in full or in part, cancel, or let "
            "them expire after 7 simulated days (some capture around it); replies lost (10 %) and 5xx (10 %) "
            "that the SDK does not retry, crashes, ledger refusals, wallet hosts dying",
            {
                "load": {"manual_share": 0.5, "refund_share": 0.2},
                "psp": {"lost_reply_rate": 0.1, "error_rate": 0.1, "sdk_retries": 0},
                "client": {"abandon_rate": 0.2},
                "service": {"crash_after_capture_rate": 0.02, "ledger_failure_rate": 0.02},
                "hosts": {"crashes": (1.0, 2.5)},
                "webhooks": {"duplicate_rate": 0.2, "reorder_s": 2.0},
            },
        ),
        Scenario(
            "black_friday",
            "five times the load for 5 s, with lost replies and short client timeouts",
            {
                "load": {"spike_factor": 5.0, "spike_at": 1.0, "spike_s": 5.0},
                "psp": {"lost_reply_rate": 0.02, "latency_s": 0.05},
                "client": {"timeout_s": 0.5},
            },
        ),
        Scenario(
            "stripe_outage_failover",
            "Stripe refuses every connection from 2 s to 8 s, Braintree second: each definite failure "
            "cascades, Stripe's breaker opens and new payments go straight to Braintree until a probe finds "
            "Stripe back",
            {"routing": FAILOVER, "psp": {"unreachable": ((2.0, 8.0),)}},
        ),
        Scenario(
            "timeout_after_capture_failover",
            "Stripe loses 10 % of its replies after capturing and 5 % are 5xx, the SDK does not retry, 20 % "
            "of clients never do, and Stripe refuses connections for 0.5 s; Braintree second: only the "
            "refused connections cascade, every unknown is resolved at Stripe",
            {
                "routing": FAILOVER,
                "psp": {
                    "lost_reply_rate": 0.1,
                    "error_rate": 0.05,
                    "sdk_retries": 0,
                    "unreachable": ((1.0, 1.5),),
                },
                "client": {"abandon_rate": 0.2},
            },
        ),
        Scenario(
            "late_success",
            "Stripe refuses 5 % of captures and makes them up to 3 s later; Braintree second, and 30 % of "
            "webhooks dropped: each late capture is found (webhook or lookup), refunded at Stripe and booked "
            "both ways",
            {**LATE_SUCCESSES, "webhooks": {"drop_rate": 0.3}},
        ),
    )
}

SWAPS = {
    s.name: s
    for s in (
        Scenario(
            "idempotency_off",
            "no idempotency keys at all: every retry is a new charge",
            {"design": {"idempotency": "off"}, "client": {"timeout_s": 0.05}, "psp": {"error_rate": 0.1}},
            breaks="no_double_capture",
        ),
        Scenario(
            "redis_only_idempotency",
            "keys only in Redis, no durable backstop: a retry after Redis loses its keys charges again",
            {
                "design": {"idempotency": "redis_only"},
                "service": {"key_losses": KEY_LOSSES},
                "client": {"timeout_s": 0.05},
            },
            breaks="no_double_capture",
        ),
        Scenario(
            "no_psp_idempotency_key",
            "the PSP call carries no key: the SDK's retry after a lost reply captures a second time",
            {"design": {"psp_idempotency_key": False}, "psp": {"lost_reply_rate": 0.05}},
            breaks="no_double_capture",
        ),
        Scenario(
            "no_compensation",
            "a charge whose ledger posting failed is only marked failed: the PSP keeps the money (orphan)",
            {"design": {"compensation": False}, "service": {"ledger_failure_rate": 0.05}},
            breaks="psp_matches_ledger",
        ),
        Scenario(
            "non_idempotent_postings",
            "the ledger writes a posting again when a host's retried call (or its old copy) brings it twice",
            {
                **HOST_CRASHES,
                "hosts": {**HOST_CRASHES["hosts"], "duplicate_s": 0.5},
                "design": {"idempotent_postings": False},
            },
            breaks="psp_matches_ledger",
        ),
        Scenario(
            "client_new_keys",
            "clients retry with a fresh Idempotency-Key: the same order is charged again",
            {"client": {"same_key": False, "timeout_s": 0.05}},
            breaks="no_double_capture",
        ),
        Scenario(
            "forget_left_attempts",
            "an attempt that failed definitely is forgotten once the payment moves to the next PSP: Stripe's "
            "late successes stay captured beside Braintree's captures",
            {**LATE_SUCCESSES, "design": {"watch_left_attempts": False}},
            breaks="one_capture_across_psps",
        ),
        Scenario(
            "failover_after_resumed_attempt",
            "a client's retry resumes a payment whose first request hung up mid-call, Stripe now refusing "
            "connections, and the refusal is taken as definite: the payment fails over though the first call "
            "captured; nothing watches the attempt it left",
            {
                "routing": FAILOVER,
                "psp": {"unreachable": ((1.0, 8.0),), "latency_s": 0.04},
                "client": {"timeout_s": 0.03},
                "design": {"resumed_failures_cascade": True, "watch_left_attempts": False},
            },
            breaks="one_capture_across_psps",
        ),
    )
}

ALL = {**SCENARIOS, **SWAPS}
