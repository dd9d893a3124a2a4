"""Token buckets, the arithmetic of the rate limits: ``burst`` requests at once, ``rate`` a second after.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; a request takes one, and a caller whose
bucket holds less than one is told to wait until it will. The Redis script in
``serve_app/edge/rate_limits.py`` computes exactly this, in one atomic step per request; this module is
its specification and what the tests check it against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: How far short of a whole token still counts as one: a refill summed in floating point can land a rounding
#: error below the token it should make, and a caller who waited as told must then be served.
SLACK = 1e-9


@dataclass(frozen=True)
class Rule:
    """``rate`` tokens a second, up to ``burst``."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate > 0 and math.isfinite(self.rate)) or self.burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst >= 1, got {self.rate}, {self.burst}")

    def refill_ms(self) -> int:
        """How long an empty bucket takes to fill: a bucket untouched for longer is as good as new."""
        return math.ceil(self.burst / self.rate * 1000)


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at_ms: int


@dataclass(frozen=True)
class Outcome:
    allowed: bool
    bucket: Bucket
    #: when not allowed, how long until one token is there (whole milliseconds, rounded up)
    retry_after_ms: int = 0


def take(bucket: Bucket | None, rule: Rule, now_ms: int, cost: int = 1) -> Outcome:
    """Refill ``bucket`` (None: never used, so full) to ``now_ms``, then take ``cost`` tokens if it holds
    at least ``max(cost, 1)``: cost 0 asks whether one could be taken, a negative cost gives tokens back.
    """
    tokens = float(rule.burst) if bucket is None else refilled(bucket, rule, now_ms)
    at_ms = now_ms if bucket is None else max(bucket.at_ms, now_ms)
    if cost < 0:
        return Outcome(True, Bucket(min(float(rule.burst), tokens - cost), at_ms))
    needed = max(cost, 1)
    if tokens >= needed - SLACK:
        return Outcome(True, Bucket(tokens - cost, at_ms))
    return Outcome(False, Bucket(tokens, at_ms), wait_ms(needed - tokens, rule))


def refilled(bucket: Bucket, rule: Rule, now_ms: int) -> float:
    """The bucket's tokens at ``now_ms``; a clock that went back adds nothing."""
    elapsed_ms = max(0, now_ms - bucket.at_ms)
    return min(float(rule.burst), bucket.tokens + elapsed_ms * rule.rate / 1000)


def wait_ms(missing: float, rule: Rule) -> int:
    """Whole milliseconds (at least 1) until ``missing`` tokens have come back."""
    return max(1, math.ceil(missing * 1000 / rule.rate))


def retry_after_s(retry_after_ms: int) -> int:
    """The ``Retry-After`` header's whole seconds: at least 1, rounded up, so a retry then succeeds."""
    return max(1, math.ceil(retry_after_ms / 1000))
