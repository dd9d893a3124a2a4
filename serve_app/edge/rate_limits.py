"""Rate limits like Stripe's: a token bucket in Redis per merchant key, and one per source address for
failed authentications (a caller guessing keys). Each check is one atomic Lua script, the arithmetic of
``payray/buckets.py``, on Redis's clock so every replica agrees.

A key's bucket is charged for every authenticated request and given its token back when the request turns
out to replay an idempotency key, so retries of one request count once. An address whose failed
authentications have emptied its bucket gets 429 before any key it sends is looked up (a key already known
to the replica still works: guessing cannot find those).

Redis down or slow: the limits are not enforced (fail open) for a second at a time, which is logged at most
once a minute and counted in ``payray_rate_limit_unavailable``; authentication itself still applies.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from payray.buckets import Rule, retry_after_s
from payray.errors import RateLimited
from payray.settings import Settings

log = logging.getLogger("payray.rate_limits")

#: KEYS[1]: the bucket (a hash of tokens and at); ARGV: rate a second, burst, cost, now in ms ('' for
#: Redis's clock), expiry in ms. Returns {allowed 0/1, retry after ms, tokens left}. Mirrors
#: ``payray.buckets.take``; the numbers are stored with 17 digits so they come back exactly.
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at
if held[1] then
  tokens = tonumber(held[1])
  at = tonumber(held[2])
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  at = math.max(at, now)
else
  tokens = burst
  at = now
end
local allowed, wait = 1, 0
if cost < 0 then
  tokens = math.min(burst, tokens - cost)
else
  local needed = math.max(cost, 1)
  if tokens >= needed - 1e-9 then  -- payray.buckets.SLACK
    tokens = tokens - cost
  else
    allowed = 0
    wait = math.max(1, math.ceil((needed - tokens) * 1000 / rate))
  end
end
local shown = string.format('%.17g', tokens)
redis.call('HSET', KEYS[1], 'tokens', shown, 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {allowed, wait, shown}
"""

KEY_PREFIX = "ratelimit"


class RateLimits:
    def __init__(
        self,
        redis: Redis,
        per_key: Rule | None,
        failed_auth: Rule | None,
        registry: CollectorRegistry,
        breaker_s: float = 1.0,
    ) -> None:
        self._take = redis.register_script(TAKE)
        self._per_key = per_key
        self._failed_auth = failed_auth
        self._breaker_s = breaker_s
        self._open_until = 0.0
        self._logged_at = -float("inf")
        self.limited = Counter(
            "payray_rate_limited", "Requests answered 429, by bucket", ["bucket"], registry=registry
        )
        self.unavailable = Counter(
            "payray_rate_limit_unavailable",
            "Rate-limit checks skipped because Redis did not answer (the limits failed open)",
            registry=registry,
        )

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings, registry: CollectorRegistry) -> RateLimits:
        per_key = Rule(settings.key_rate_per_s, settings.key_burst) if settings.key_rate_per_s > 0 else None
        failed_auth = (
            Rule(settings.failed_auth_rate_per_s, settings.failed_auth_burst)
            if settings.failed_auth_rate_per_s > 0
            else None
        )
        return cls(redis, per_key, failed_auth, registry)

    async def spend_key(self, merchant_id: str) -> None:
        """One of the merchant key's tokens, or 429."""
        if self._per_key:
            await self._spend("key", merchant_id, self._per_key, 1)

    async def give_back_key(self, merchant_id: str) -> None:
        """The token of a request that replayed a stored answer: a retry does not count twice."""
        if self._per_key:
            await self._spend("key", merchant_id, self._per_key, -1)

    async def check_address(self, address: str) -> None:
        """429 if the address's failed authentications have emptied its bucket; takes nothing."""
        if self._failed_auth:
            await self._spend("failed_auth", address, self._failed_auth, 0)

    async def failed_authentication(self, address: str) -> None:
        """Count a failed authentication against the address: 429 once its bucket is empty."""
        if self._failed_auth:
            await self._spend("failed_auth", address, self._failed_auth, 1)

    async def take(self, bucket: str, who: str, rule: Rule, cost: int, now_ms: int | None = None) -> Any:
        """The script's answer: ``[allowed, retry_after_ms, tokens]``; tests pass the clock."""
        return await self._take(
            keys=[f"{KEY_PREFIX}:{bucket}:{who}"],
            args=[rule.rate, rule.burst, cost, "" if now_ms is None else now_ms, rule.refill_ms() + 1000],
        )

    async def _spend(self, bucket: str, who: str, rule: Rule, cost: int) -> None:
        """``cost`` tokens of the bucket, or 429; nothing when Redis does not answer (fail open)."""
        if time.monotonic() < self._open_until:
            self.unavailable.inc()
            return
        try:
            allowed, retry_after_ms, _ = await self.take(bucket, who, rule, cost)
        except (RedisError, OSError) as exc:
            self._open_until = time.monotonic() + self._breaker_s
            self.unavailable.inc()
            if time.monotonic() - self._logged_at >= 60:
                self._logged_at = time.monotonic()
                log.warning("rate limits not enforced: Redis did not answer (%s)", type(exc).__name__)
            return
        if not allowed:
            self.limited.labels(bucket).inc()
            raise RateLimited(_MESSAGES[bucket], retry_after_s=retry_after_s(int(retry_after_ms)))


_MESSAGES = {
    "key": "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
    "failed_auth": "Too many failed authentications from this address. Retry after the time in Retry-After.",
}


def client_address(request: Request) -> str:
    """Who sent the request: the peer, or the last ``X-Forwarded-For`` hop when the peer is a proxy on this
    machine (HAProxy in front of the replicas); a remote peer cannot choose its address by header."""
    peer = request.client.host if request.client else "unknown"
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    if forwarded and _is_loopback(peer):
        return forwarded.rpartition(",")[2].strip() or peer
    return peer


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
