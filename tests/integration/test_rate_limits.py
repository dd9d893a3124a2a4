"""Rate limits: a burst on one key and a run of guessed keys see 429 with Retry-After, replays of an
idempotency key do not count, and a Redis that does not answer lets authenticated traffic through.

The API tests run a second Serve application with low limits on the session's stack (its database, Redis,
PSP emulator and wallet hosts), under ``/limited``; the script's tests call Redis directly.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import stripe
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ops.stack import EMULATOR_API_KEY, StackInfo
from payray.buckets import Bucket, Rule, take
from payray.settings import Settings
from serve_app.edge.rate_limits import KEY_PREFIX, RateLimits
from tests.integration.stack_fixtures import STACK_NAMESPACE, WEBHOOK_SECRETS

APP = "payray-limited"
PREFIX = "/limited"
KEY_RULE = Rule(rate=2.0, burst=10)
FAILED_AUTH_RULE = Rule(rate=0.2, burst=10)


@pytest.fixture(scope="module")
def limited(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """The base URL of an API with low limits, sharing everything else with the session's stack."""
    from ray import serve

    from serve_app.edge.app import build_app

    settings = Settings(
        home=Path(tmp_path_factory.mktemp("limited-home")),
        database_url=stack.database_url,
        redis_url=stack.redis_url,
        admin_key=stack.admin_key,
        psp_api_key=EMULATOR_API_KEY,
        psp_api_base=stack.psp_api_base,
        ray_namespace=STACK_NAMESPACE,
        stripe_webhook_secrets=WEBHOOK_SECRETS,
        psp_timeout_s=2.0,
        psp_max_retries=1,
        key_rate_per_s=KEY_RULE.rate,
        key_burst=KEY_RULE.burst,
        failed_auth_rate_per_s=FAILED_AUTH_RULE.rate,
        failed_auth_burst=FAILED_AUTH_RULE.burst,
    )
    serve.run(build_app(settings), name=APP, route_prefix=PREFIX, blocking=False)
    base = stack.base_url + PREFIX
    deadline = time.monotonic() + 120
    while httpx.get(f"{base}/healthz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the limited app did not come up"
        time.sleep(0.5)
    try:
        yield base
    finally:
        serve.delete(APP)
        _forget_address_buckets(redis_url)


def _forget_address_buckets(redis_url: str) -> None:
    """This machine's failed authentications are forgotten, so no later test starts locked out."""
    control = redis.Redis.from_url(redis_url)
    for key in control.scan_iter(f"{KEY_PREFIX}:failed_auth:*"):
        control.delete(key)


def _new_merchant(admin: httpx.Client, base: str) -> tuple[str, httpx.Client]:
    created = admin.post(f"{base}/v1/merchants", json={"name": f"limited-{uuid.uuid4().hex[:8]}"})
    assert created.status_code == 200, created.text
    merchant = created.json()
    client = httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {merchant['api_key']}"}, timeout=60
    )
    return merchant["id"], client


def _assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "rate_limit")


def test_a_burst_on_one_key_sees_429_with_retry_after(limited: str, admin: httpx.Client) -> None:
    _, client = _new_merchant(admin, limited)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client.get("/v1/balance"), range(300)))
    elapsed_s = time.monotonic() - started
    statuses = [answer.status_code for answer in answers]
    print(f"300 requests on one key in {elapsed_s:.1f} s: {statuses.count(429)} answered 429")
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0
    assert statuses.count(200) <= KEY_RULE.burst + KEY_RULE.rate * elapsed_s + 1
    for answer in answers:
        if answer.status_code == 429:
            _assert_rate_limited(answer)
    time.sleep(1 / KEY_RULE.rate)
    assert client.get("/v1/balance").status_code == 200  # a caller that waited as told is served


def test_stripes_sdk_raises_its_rate_limit_error(limited: str, admin: httpx.Client) -> None:
    created = admin.post(f"{limited}/v1/merchants", json={"name": "limited-sdk"}).json()
    client = stripe.StripeClient(created["api_key"], base_addresses={"api": limited}, max_network_retries=0)
    with pytest.raises(stripe.RateLimitError):
        for _ in range(3 * KEY_RULE.burst):
            client.v1.balance.retrieve()


def test_guessed_keys_from_one_address_see_429_before_any_lookup(
    limited: str, admin: httpx.Client, redis_url: str
) -> None:
    _, known = _new_merchant(admin, limited)
    assert known.get("/v1/balance").status_code == 200  # its key is now known to the replica
    _, unknown = _new_merchant(admin, limited)  # never called yet: its key would need a lookup
    try:
        answers = [
            httpx.get(
                f"{limited}/v1/balance",
                headers={"Authorization": f"Bearer sk_test_{uuid.uuid4().hex}"},
                timeout=30,
            )
            for _ in range(100)
        ]
        statuses = [answer.status_code for answer in answers]
        print(f"100 guessed keys: {statuses.count(401)} answered 401, {statuses.count(429)} answered 429")
        assert statuses[: FAILED_AUTH_RULE.burst] == [401] * FAILED_AUTH_RULE.burst
        assert statuses.count(429) >= 100 - FAILED_AUTH_RULE.burst - 2
        for answer in answers:
            if answer.status_code == 429:
                _assert_rate_limited(answer)
        missing = httpx.get(f"{limited}/v1/balance", timeout=30)  # no key at all counts as a failure too
        _assert_rate_limited(missing)
        _assert_rate_limited(unknown.get("/v1/balance"))
        assert known.get("/v1/balance").status_code == 200
    finally:
        _forget_address_buckets(redis_url)
    assert unknown.get("/v1/balance").status_code == 200


def test_replays_of_an_idempotency_key_do_not_count(
    limited: str, admin: httpx.Client, redis_url: str
) -> None:
    merchant_id, client = _new_merchant(admin, limited)
    body = {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/v1/charges", json=body, headers=headers)
    assert first.status_code == 200, first.text
    started = time.monotonic()
    replays = [client.post("/v1/charges", json=body, headers=headers) for _ in range(3 * KEY_RULE.burst)]
    elapsed_s = time.monotonic() - started
    assert 3 * KEY_RULE.burst > KEY_RULE.burst + KEY_RULE.rate * elapsed_s, "too slow to tell"
    assert [r.status_code for r in replays] == [200] * len(replays)
    assert all(r.headers["Idempotent-Replayed"] == "true" and r.content == first.content for r in replays)
    tokens = redis.Redis.from_url(redis_url).hget(f"{KEY_PREFIX}:key:{merchant_id}", "tokens")
    assert (
        tokens is not None and float(tokens) >= KEY_RULE.burst - 1
    )  # only the first charge's token is spent


def test_admin_requests_have_no_bucket(limited: str, admin: httpx.Client) -> None:
    statuses = [admin.get(f"{limited}/v1/reconciliation/runs").status_code for _ in range(3 * KEY_RULE.burst)]
    assert statuses == [200] * len(statuses)


def test_redis_down_lets_authenticated_traffic_through(
    limited: str, admin: httpx.Client, redis_url: str
) -> None:
    _, client = _new_merchant(admin, limited)
    assert client.get("/v1/balance").status_code == 200
    control = redis.Redis.from_url(redis_url)
    password = uuid.uuid4().hex
    control.config_set("requirepass", password)
    try:
        control = redis.Redis.from_url(redis_url, password=password)
        control.client_kill_filter(_type="normal", skipme=True)
        statuses = [client.get("/v1/balance").status_code for _ in range(3 * KEY_RULE.burst)]
        charge = client.post(
            "/v1/charges",
            json={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
    finally:
        control.config_set("requirepass", "")
    assert statuses == [200] * len(statuses)
    assert charge.status_code == 200, charge.text
    metrics = httpx.get(f"{limited}/metrics", timeout=30).text
    assert "payray_rate_limit_unavailable_total" in metrics


# -- the script itself ---------------------------------------------------------------------------------------


def test_the_script_computes_what_the_specification_says(redis_url: str) -> None:
    rng = random.Random(15)
    rules = [Rule(rate=rng.choice([0.5, 1, 3.3, 100, 1234.5]), burst=rng.randint(1, 50)) for _ in range(8)]

    async def scenario() -> None:
        client = Redis.from_url(redis_url)
        limits = RateLimits(client, None, None, CollectorRegistry())
        try:
            for n, rule in enumerate(rules):
                who = f"spec-{uuid.uuid4().hex}-{n}"
                bucket: Bucket | None = None
                now = 1_700_000_000_000
                for _ in range(200):
                    now += rng.choice([0, 0, 1, 7, 50, 333, 2000])
                    cost = rng.choice([1, 1, 1, 0, -1])
                    expected = take(bucket, rule, now, cost)
                    allowed, retry_after_ms, tokens = await limits.take("spec", who, rule, cost, now)
                    assert (bool(allowed), int(retry_after_ms)) == (expected.allowed, expected.retry_after_ms)
                    assert float(tokens) == expected.bucket.tokens
                    bucket = expected.bucket
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_unreachable_redis_fails_open_and_counts_it() -> None:
    async def scenario() -> float:
        client = Redis.from_url("redis://127.0.0.1:1", socket_timeout=0.2, socket_connect_timeout=0.2)
        registry = CollectorRegistry()
        limits = RateLimits(client, Rule(1, 1), Rule(1, 1), registry)
        try:
            for _ in range(5):
                await limits.spend_key("acct_x")
                await limits.check_address("192.0.2.1")
                await limits.failed_authentication("192.0.2.1")
                await limits.give_back_key("acct_x")
        finally:
            await client.aclose()
        return registry.get_sample_value("payray_rate_limit_unavailable_total") or 0.0

    assert asyncio.run(scenario()) == 20
