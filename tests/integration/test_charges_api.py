"""The charge path end to end: HTTP → Serve → Redis/Postgres idempotency → PSP emulator → ledger → wallet."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
import redis
import stripe

from tests.integration.psp_queries import captures_for_merchant, payment_intents
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def rows_for(database_url: str, merchant_id: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        payments = conn.execute(
            "SELECT count(*) FROM payments WHERE merchant_id = %s", (merchant_id,)
        ).fetchone()
        keys = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE merchant_id = %s", (merchant_id,)
        ).fetchone()
        ledger = conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE merchant_id = %s", (merchant_id,)
        ).fetchone()
    assert payments and keys and ledger
    return {"payments": payments[0], "keys": keys[0], "ledger": ledger[0]}


def test_charge_succeeds_and_credits_the_wallet(merchant: Merchant, psp_control: httpx.Client) -> None:
    response = merchant.charge(amount=2500, currency="eur", metadata={"order": "42"})
    assert response.status_code == 200, response.text
    charge = response.json()
    assert charge["object"] == "charge" and charge["status"] == "succeeded"
    assert charge["amount"] == 2500 and charge["currency"] == "eur" and charge["metadata"] == {"order": "42"}
    assert charge["id"].startswith("ch_") and charge["psp_reference"].startswith("pi_")
    assert charge["merchant"] == merchant.id

    fetched = merchant.client.get(f"/v1/charges/{charge['id']}")
    assert fetched.status_code == 200 and fetched.json() == charge
    listed = merchant.client.get("/v1/charges").json()
    assert listed["object"] == "list" and [c["id"] for c in listed["data"]] == [charge["id"]]

    balance = merchant.client.get("/v1/balance").json()
    fee = (2500 * 290 + 5000) // 10000
    assert balance["available"] == [{"amount": 2500 - fee, "currency": "eur"}]
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1


def test_decline_answers_402_with_the_failed_charge(merchant: Merchant) -> None:
    response = merchant.charge(payment_method="pm_card_chargeDeclinedInsufficientFunds")
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert error["type"] == "card_error" and error["code"] == "card_declined"
    assert error["decline_code"] == "insufficient_funds"
    charge = merchant.client.get(f"/v1/charges/{error['charge']}").json()
    assert charge["status"] == "failed" and charge["failure_code"] == "insufficient_funds"
    assert merchant.client.get("/v1/balance").json()["available"] == []


@pytest.mark.parametrize("payment_method", ["pm_card_visa", "pm_card_chargeDeclined"])
def test_replay_returns_the_first_response_byte_for_byte(merchant: Merchant, payment_method: str) -> None:
    first = merchant.charge("replay-key", payment_method=payment_method)
    again = merchant.charge("replay-key", payment_method=payment_method)
    assert first.status_code in (200, 402)
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers


def test_twenty_concurrent_identical_requests_capture_once(
    merchant: Merchant, psp_control: httpx.Client
) -> None:
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: merchant.charge("same-key", amount=777), range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    assert 200 in statuses
    assert len({r.json()["id"] for r in responses if r.status_code == 200}) == 1
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1
    assert len(payment_intents(psp_control, payray_merchant_id=merchant.id)) == 1


def test_same_key_with_another_body_is_refused(merchant: Merchant) -> None:
    assert merchant.charge("k1", amount=100).status_code == 200
    reused = merchant.charge("k1", amount=200)
    assert reused.status_code == 422
    assert reused.json()["error"] == {
        "type": "idempotency_error",
        "code": "idempotency_key_reused",
        "message": reused.json()["error"]["message"],
        "doc_url": "https://stripe.com/docs/error-codes/idempotency-key-reused",
    }


VALID = {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}
BAD_BODIES: list[tuple[str, Any, int]] = [
    ("float amount", {**VALID, "amount": 10.5}, 400),
    ("string amount", {**VALID, "amount": "1000"}, 400),
    ("bool amount", {**VALID, "amount": True}, 400),
    ("zero amount", {**VALID, "amount": 0}, 400),
    ("negative amount", {**VALID, "amount": -5}, 400),
    ("too large amount", {**VALID, "amount": 100_000_000}, 400),
    ("unknown currency", {**VALID, "currency": "xyz"}, 400),
    ("four-letter currency", {**VALID, "currency": "USDX"}, 400),
    ("raw card number", {**VALID, "payment_method": "4242424242424242"}, 400),
    ("unknown field", {**VALID, "card_cvc": "123"}, 400),
    ("missing field", {"amount": 1000, "currency": "usd"}, 400),
    ("metadata not strings", {**VALID, "metadata": {"a": 1}}, 400),
    ("body is a list", [VALID], 400),
]


@pytest.mark.parametrize(("case", "body", "status"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_invalid_body_is_rejected_and_changes_nothing(
    merchant: Merchant, api_database_url: str, psp_control: httpx.Client, case: str, body: Any, status: int
) -> None:
    response = merchant.client.post("/v1/charges", json=body, headers={"Idempotency-Key": "bad-1"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert rows_for(api_database_url, merchant.id) == {"payments": 0, "keys": 0, "ledger": 0}
    assert payment_intents(psp_control, payray_merchant_id=merchant.id) == []
    # The key was not stored: the fixed request may use it.
    assert merchant.charge("bad-1").status_code == 200


@pytest.mark.parametrize(
    ("case", "content", "content_type", "status"),
    [
        ("malformed json", b'{"amount": 10', "application/json", 400),
        (
            "nan",
            b'{"amount": NaN, "currency": "usd", "payment_method": "pm_card_visa"}',
            "application/json",
            400,
        ),
        ("65 KiB body", b'{"description": "' + b"x" * 65 * 1024 + b'"}', "application/json", 413),
        ("unsupported type", b"amount=1", "text/plain", 400),
        ("malformed form", b"amount[=1", "application/x-www-form-urlencoded", 400),
    ],
)
def test_malformed_body_is_rejected_and_changes_nothing(
    merchant: Merchant, api_database_url: str, case: str, content: bytes, content_type: str, status: int
) -> None:
    response = merchant.client.post(
        "/v1/charges", content=content, headers={"Idempotency-Key": "bad-2", "Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert rows_for(api_database_url, merchant.id) == {"payments": 0, "keys": 0, "ledger": 0}


@pytest.mark.parametrize("key", [None, "", "x" * 256, "naïve-key".encode("latin-1")])
def test_missing_or_invalid_idempotency_key_is_rejected(
    merchant: Merchant, api_database_url: str, key: str | bytes | None
) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = merchant.client.post("/v1/charges", json=VALID, headers=headers)
    assert response.status_code == 400
    expected = "idempotency_key_missing" if not key else "idempotency_key_invalid"
    assert response.json()["error"]["code"] == expected
    assert rows_for(api_database_url, merchant.id) == {"payments": 0, "keys": 0, "ledger": 0}


def test_form_encoded_body_as_stripe_sdks_send_it(merchant: Merchant) -> None:
    response = merchant.client.post(
        "/v1/charges",
        content=b"amount=1234&currency=gbp&payment_method=pm_card_visa&metadata[order]=7",
        headers={"Idempotency-Key": "form-1", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["amount"] == 1234 and response.json()["metadata"] == {"order": "7"}


def test_another_merchants_charge_answers_404(new_merchant: Any) -> None:
    alice, bob = new_merchant(), new_merchant()
    charge = alice.charge().json()
    response = bob.client.get(f"/v1/charges/{charge['id']}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    assert bob.client.get("/v1/charges").json()["data"] == []


@pytest.mark.parametrize("authorization", [None, "Bearer sk_test_nope", "Basic !!!", "Token x"])
def test_bad_key_answers_401(stack: Any, authorization: str | None) -> None:
    headers = {"Idempotency-Key": "k"} | ({"Authorization": authorization} if authorization else {})
    response = httpx.post(f"{stack.base_url}/v1/charges", json=VALID, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_merchant_key_cannot_reach_admin_routes(merchant: Merchant) -> None:
    assert merchant.client.post("/v1/merchants", json={"name": "x"}).status_code == 401
    assert merchant.client.get("/v1/admin/invariants").status_code == 401


def test_list_paginates_newest_first(merchant: Merchant) -> None:
    ids = [merchant.charge(amount=100 + i).json()["id"] for i in range(5)]
    first = merchant.client.get("/v1/charges", params={"limit": 2}).json()
    assert [c["id"] for c in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = merchant.client.get(
        "/v1/charges", params={"limit": 10, "starting_after": first["data"][-1]["id"]}
    ).json()
    assert [c["id"] for c in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
    assert merchant.client.get("/v1/charges", params={"limit": 0}).status_code == 400
    assert merchant.client.get("/v1/charges", params={"limit": 101}).status_code == 400


def _customer(merchant: Merchant, email: str) -> str:
    created = merchant.client.post(
        "/v1/customers", data={"email": email}, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def test_the_customer_filter_lists_a_customers_charges_both_ways(
    stack: Any, merchant: Merchant, new_merchant: Any
) -> None:
    ada, bob = _customer(merchant, "ada@example.com"), _customer(merchant, "bob@example.com")
    adas = [merchant.charge(amount=100 + i, customer=ada).json()["id"] for i in range(3)]
    merchant.charge(amount=700, customer=bob)
    merchant.charge(amount=800)

    def listed(**params: Any) -> list[str]:
        answer = merchant.client.get("/v1/charges", params=params)
        assert answer.status_code == 200, answer.text
        return [c["id"] for c in answer.json()["data"]]

    assert listed(customer=ada) == adas[::-1]
    assert listed(customer=ada, limit=1, starting_after=adas[2]) == [adas[1]]
    assert listed(customer=ada, ending_before=adas[0]) == adas[:0:-1]
    assert listed(customer=ada, **{"created[gt]": 0}) == adas[::-1]
    assert len(listed()) == 5
    other: Merchant = new_merchant()
    theirs = _customer(other, "eve@example.com")
    assert listed(customer=theirs) == [] and listed(customer="cus_unknown") == []
    assert [c["id"] for c in other.client.get("/v1/charges", params={"customer": ada}).json()["data"]] == []
    twice = merchant.client.get("/v1/charges", params=[("customer", ada), ("customer", bob)])
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "customer"

    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    pages = client.v1.charges.list(params={"customer": ada, "limit": 1})
    assert [c.id for c in pages.auto_paging_iter()] == adas[::-1]
    backwards = client.v1.charges.list(params={"customer": ada, "limit": 1, "ending_before": adas[0]})
    assert [c.id for c in backwards.auto_paging_iter()] == adas[1:]


def test_retry_after_redis_flush_does_not_capture_twice(
    merchant: Merchant, redis_url: str, psp_control: httpx.Client
) -> None:
    first = merchant.charge("flush-key", amount=4321)
    assert first.status_code == 200
    redis.Redis.from_url(redis_url).flushall()
    again = merchant.charge("flush-key", amount=4321)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1
    assert merchant.charge("flush-key", amount=1).status_code == 422


def test_redis_down_degrades_to_postgres_never_open(
    merchant: Merchant, redis_url: str, psp_control: httpx.Client
) -> None:
    control = redis.Redis.from_url(redis_url)
    password = uuid.uuid4().hex
    control.config_set("requirepass", password)
    try:
        control = redis.Redis.from_url(redis_url, password=password)
        control.client_kill_filter(_type="normal", skipme=True)
        first = merchant.charge("degraded-key", amount=999)
        assert first.status_code == 200, first.text
        again = merchant.charge("degraded-key", amount=999)
        assert again.status_code == 200 and again.content == first.content
        assert again.headers["Idempotent-Replayed"] == "true"
        assert merchant.charge("degraded-key", amount=5).status_code == 422
    finally:
        control.config_set("requirepass", "")
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1


def test_psp_timeout_after_capture_is_pending_and_the_retry_captures_once(
    merchant: Merchant, faults: Any, psp_control: httpx.Client
) -> None:
    faults(timeout_after_capture_rate=1.0, only_paths=["/v1/payment_intents"])
    pending = merchant.charge("timeout-key", amount=3000)
    assert pending.status_code == 202, pending.text
    assert pending.json()["status"] == "pending"
    faults()
    retried = merchant.charge("timeout-key", amount=3000)
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == pending.json()["id"] and retried.json()["status"] == "succeeded"
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1
    assert merchant.charge("timeout-key", amount=3000).content == retried.content
