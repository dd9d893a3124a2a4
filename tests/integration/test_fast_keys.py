"""The Redis fast path of idempotency against a real Redis: claim, in flight, replay, and Redis gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from redis.asyncio import Redis

from serve_app.stores.fast_keys import FastKeys, FastRecord

pytestmark = pytest.mark.integration

FINGERPRINT = bytes(range(32))


T = TypeVar("T")


def _run(redis_url: str, scenario: Callable[[FastKeys], Awaitable[T]]) -> T:
    async def main() -> T:
        redis = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return await scenario(FastKeys(redis, ttl_ms=60_000, lease_ms=5_000))
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_first_claim_wins_then_in_flight_then_the_stored_answer(redis_url: str) -> None:
    key = uuid.uuid4().hex

    async def scenario(fast: FastKeys) -> list[object]:
        first = await fast.claim("acct_a", key, FINGERPRINT)
        while_in_flight = await fast.claim("acct_a", key, FINGERPRINT)
        await fast.remember("acct_a", key, FINGERPRINT, 200, b'{"id":"ch_1"}')
        replay = await fast.claim("acct_a", key, FINGERPRINT)
        other_merchant = await fast.claim("acct_b", key, FINGERPRINT)
        return [first, while_in_flight, replay, other_merchant]

    first, in_flight, replay, other = _run(redis_url, scenario)
    assert first is True and other is True
    assert in_flight == FastRecord(FINGERPRINT, None, None)
    assert replay == FastRecord(FINGERPRINT, 200, b'{"id":"ch_1"}')


def test_concurrent_claims_of_one_key_have_exactly_one_winner(redis_url: str) -> None:
    key = uuid.uuid4().hex

    async def scenario(fast: FastKeys) -> list[object]:
        return list(await asyncio.gather(*(fast.claim("acct_a", key, FINGERPRINT) for _ in range(50))))

    outcomes = _run(redis_url, scenario)
    assert outcomes.count(True) == 1
    assert all(isinstance(o, FastRecord) for o in outcomes if o is not True)


def test_a_forgotten_claim_can_be_claimed_again(redis_url: str) -> None:
    key = uuid.uuid4().hex

    async def scenario(fast: FastKeys) -> list[object]:
        first = await fast.claim("acct_a", key, FINGERPRINT)
        await fast.forget("acct_a", key)
        return [first, await fast.claim("acct_a", key, FINGERPRINT)]

    assert _run(redis_url, scenario) == [True, True]


def test_unreachable_redis_answers_dont_know_and_never_raises() -> None:
    async def scenario() -> list[object]:
        redis = Redis.from_url("redis://127.0.0.1:1", socket_timeout=0.2, socket_connect_timeout=0.2)
        fast = FastKeys(redis, ttl_ms=60_000, lease_ms=5_000, breaker_s=60)
        try:
            first = await fast.claim("acct_a", "k", FINGERPRINT)
            second = await fast.claim("acct_a", "k", FINGERPRINT)  # the breaker is open now
            await fast.remember("acct_a", "k", FINGERPRINT, 200, b"{}")  # nothing raised, nothing kept
            return [first, second]
        finally:
            await redis.aclose()

    assert asyncio.run(scenario()) == [None, None]
