"""The Redis fast path of idempotency: ``SET idem:{merchant}:{key} NX PX``.

Redis answers most replays and in-flight collisions without touching Postgres. It is never the only
guard: when Redis is down, flushed or slow, every method degrades to "don't know" and the durable record in
Postgres decides. A short circuit breaker keeps a dead Redis from adding its timeout to every request.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError


@dataclass(frozen=True)
class FastRecord:
    fingerprint: bytes
    status: int | None
    body: bytes | None


# Claim or read in one round trip (``SET … NX GET`` needs Redis 7; the embedded Redis is 6.2).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


class FastKeys:
    def __init__(self, redis: Redis, ttl_ms: int, lease_ms: int, breaker_s: float = 1.0) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._ttl_ms = ttl_ms
        self._lease_ms = lease_ms
        self._breaker_s = breaker_s
        self._open_until = 0.0

    @staticmethod
    def name(merchant_id: str, key: str) -> str:
        return f"idem:{merchant_id}:{key}"

    def _available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _trip(self) -> None:
        self._open_until = time.monotonic() + self._breaker_s

    async def claim(self, merchant_id: str, key: str, fingerprint: bytes) -> FastRecord | bool | None:
        """``True`` if we claimed the key, the existing record if someone did, ``None`` if Redis can't say."""
        if not self._available():
            return None
        value = json.dumps({"fp": fingerprint.hex(), "s": None, "b": None})
        try:
            held = await self._claim(keys=[self.name(merchant_id, key)], args=[value, self._lease_ms])
        except (RedisError, OSError):
            self._trip()
            return None
        return True if held is None else _decode(held)

    async def remember(
        self, merchant_id: str, key: str, fingerprint: bytes, status: int, body: bytes
    ) -> None:
        if not self._available():
            return
        value = json.dumps({"fp": fingerprint.hex(), "s": status, "b": base64.b64encode(body).decode()})
        try:
            await self._redis.set(self.name(merchant_id, key), value, px=self._ttl_ms)
        except (RedisError, OSError):
            self._trip()

    async def forget(self, merchant_id: str, key: str) -> None:
        """Drop our claim after a request that stored nothing (so the client may retry at once)."""
        if not self._available():
            return
        try:
            await self._redis.delete(self.name(merchant_id, key))
        except (RedisError, OSError):
            self._trip()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False


def _decode(raw: Any) -> FastRecord | None:
    try:
        data = json.loads(raw)
        body = base64.b64decode(data["b"]) if data.get("b") is not None else None
        return FastRecord(bytes.fromhex(data["fp"]), data.get("s"), body)
    except (ValueError, KeyError, TypeError):
        return None
