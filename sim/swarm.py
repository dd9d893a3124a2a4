"""Swarm testing, as TigerBeetle's VOPR does it: each seed draws the fault rates themselves, so a thousand
seeds explore a thousand different worlds, not one world a thousand times. The full design runs a fault phase
and then a quiet phase in which every charge must finish; any violation names its seed for ``--seed``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sim.config import SimConfig


def swarm_config(seed: int, charges: int = 500) -> SimConfig:
    """The world of ``seed``: which faults are on, and how often, drawn from the seed alone."""
    draw = random.Random(f"swarm-{seed}")

    def rate(high: float, chance: float = 0.6) -> float:
        return round(draw.uniform(0.0, high), 4) if draw.random() < chance else 0.0

    def windows(count: int, length: float) -> tuple[tuple[float, float], ...]:
        starts = sorted(draw.uniform(0.0, 6.0) for _ in range(draw.randrange(count + 1)))
        return tuple((round(s, 3), round(s + draw.uniform(0.1, length), 3)) for s in starts)

    # A refund made at the PSP by hand reaches payray only by webhook: drawn only where none are dropped
    # (with drops, the nightly reconciliation is what names it).
    dropped = rate(0.5)
    by_hand = rate(0.05) if not dropped else 0.0
    world = SimConfig(seed=seed).with_(
        load={
            "charges": charges,
            "rate": round(draw.uniform(20.0, 400.0), 1),
            "merchants": draw.randrange(1, 16),
            "spike_factor": round(draw.uniform(1.0, 6.0), 2),
            "spike_at": round(draw.uniform(0.0, 3.0), 2),
            "spike_s": round(draw.uniform(0.0, 3.0), 2),
            "refund_share": round(draw.uniform(0.0, 0.5), 3),
        },
        client={
            "timeout_s": round(draw.choice((0.02, 0.05, 0.2, 1.0, 10.0)), 3),
            "max_retries": draw.randrange(0, 8),
            "backoff_s": round(draw.uniform(0.01, 1.0), 3),
            "abandon_rate": rate(0.6),
        },
        psp={
            "latency_s": round(draw.uniform(0.005, 0.2), 4),
            "latency_sigma": round(draw.uniform(0.1, 1.2), 3),
            "decline_rate": rate(0.4, chance=0.9),
            "error_rate": rate(0.5),
            "lost_reply_rate": rate(0.4),
            "refund_refusal_rate": rate(0.3),
            "external_refund_rate": by_hand,
            "outages": windows(2, 2.0),
            "sdk_retries": draw.randrange(0, 4),
        },
        database={"pool": draw.randrange(1, 16), "restarts": windows(2, 1.5)},
        service={
            "crash_after_capture_rate": rate(0.1),
            "ledger_failure_rate": rate(0.1),
            "key_losses": tuple(sorted(round(draw.uniform(0.0, 8.0), 3) for _ in range(draw.randrange(4)))),
        },
        webhooks={
            "delay_s": round(draw.uniform(0.01, 3.0), 3),
            "duplicate_rate": rate(0.5),
            "drop_rate": dropped,
            "reorder_s": round(draw.uniform(0.0, 5.0), 3),
        },
        reconciliation={
            "missing_rate": rate(0.05, chance=0.3),
            "amount_mismatch_rate": rate(0.05, chance=0.3),
            "unknown_rows": draw.randrange(4) if draw.random() < 0.3 else 0,
        },
    )
    world = world.with_(
        service={
            "replicas": draw.randrange(1, 5),
            "replica_crashes": tuple(
                sorted(round(draw.uniform(0.0, 8.0), 3) for _ in range(draw.randrange(3)))
            ),
            "replica_restart_s": round(draw.uniform(0.5, 10.0), 3),
        }
    )
    # Wallet hosts, drawn after the above so those worlds stay what they were: how many, how few wallets each
    # may keep (passivation), their batching window, and crashes, some leaving the old copy writing a while.
    world = world.with_(
        hosts={
            "hosts": draw.randrange(1, 5),
            "wallet_cache": draw.randrange(1, 20),
            "wallet_idle_s": round(draw.uniform(0.5, 600.0), 1),
            "call_s": round(draw.uniform(0.0005, 0.005), 4),
            "group_commit_s": round(draw.uniform(0.0, 0.01), 4),
            "crashes": tuple(sorted(round(draw.uniform(0.0, 4.0), 3) for _ in range(draw.randrange(4)))),
            "restart_s": round(draw.uniform(0.2, 3.0), 3),
            "duplicate_s": rate(1.0, chance=0.4),
        }
    )
    # Manual captures: in some worlds a share of the orders only authorize, and their merchants capture (in
    # full or in part), cancel, or let them expire 7 simulated days later.
    world = world.with_(
        load={
            "manual_share": rate(0.6, chance=0.4),
            "cancel_share": round(draw.uniform(0.0, 0.3), 3),
            "expire_share": round(draw.uniform(0.0, 0.3), 3),
            "late_share": round(draw.uniform(0.0, 0.1), 3),
            "partial_share": round(draw.uniform(0.0, 1.0), 3),
            "capture_after_s": round(draw.uniform(0.05, 5.0), 3),
        }
    )
    return _routing(world, draw, rate, windows)


def _routing(
    world: SimConfig,
    draw: random.Random,
    rate: Callable[..., float],
    windows: Callable[[int, float], tuple[tuple[float, float], ...]],
) -> SimConfig:
    """Routing, drawn last so the worlds above stay what they were: in half the worlds a second PSP, either
    first; in some, PSPs refusing connections for a while, or answering a refusal to captures they make
    later, with or without a PSP to fail over to; breakers of any sensitivity."""
    second = draw.random() < 0.5
    priorities = draw.choice((("stripe", "braintree"), ("braintree", "stripe"))) if second else ("stripe",)
    world = world.with_(
        routing={
            "priorities": priorities,
            "breaker_threshold": draw.randrange(1, 10),
            "breaker_open_s": round(draw.uniform(0.2, 10.0), 3),
            "breaker_slow_s": round(draw.uniform(0.05, 3.0), 3),
        }
    )
    faults = {}
    for name in ("psp", "braintree"):
        faults[name] = {
            "unreachable": windows(2, 3.0) if draw.random() < 0.5 else (),
            "late_success_rate": rate(0.1, chance=0.4),
            "late_success_s": round(draw.uniform(0.01, 5.0), 3),
        }
    faults["braintree"] |= {  # Braintree's other behaviour, as Stripe's is drawn above
        "latency_s": round(draw.uniform(0.005, 0.2), 4),
        "decline_rate": rate(0.4, chance=0.9),
        "error_rate": rate(0.5),
        "lost_reply_rate": rate(0.4),
        "refund_refusal_rate": rate(0.3),
        "external_refund_rate": world.psp.external_refund_rate and rate(0.05),
        "outages": windows(2, 2.0),
        "sdk_retries": draw.randrange(0, 4),
    }
    return world.with_(**faults)
