"""PaymentIntents through Stripe's Python SDK and plain HTTP: the lifecycle, manual capture in part, cancel,
a decline and a second confirmation, the 7-day expiry, and requests refused with nothing left behind. The
money invariants hold after each (``invariants_hold``), holds and captures included."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.polling import until
from tests.integration.psp_queries import captures_for_merchant
from tests.integration.stack_fixtures import Merchant
from tests.integration.test_authorizations_api import held
from tests.integration.test_reconciliation_api import run_day, run_discrepancies, today
from tests.integration.webhook_receiver import Receiver

__all__ = ["today"]  # the reconciliation tests' fixture: a day clear of midnight

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


@pytest.fixture
def client(stack: StackInfo, merchant: Merchant) -> stripe.StripeClient:
    return stripe.StripeClient(
        merchant.api_key, base_addresses={"api": stack.base_url}, max_network_retries=2
    )


def post(merchant: Merchant, path: str, key: str | None = None, **body: Any) -> httpx.Response:
    return merchant.client.post(path, json=body, headers={"Idempotency-Key": key or uuid.uuid4().hex})


def topics(database_url: str, intent_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT topic FROM outbox WHERE aggregate_id = %s ORDER BY id", (intent_id,))
        return [r[0] for r in rows.fetchall()]


def count(database_url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def test_the_intent_lifecycle_through_the_sdk(
    client: stripe.StripeClient, merchant: Merchant, api_database_url: str
) -> None:
    customer = client.v1.customers.create(params={"email": "ada@example.com"})
    intent = client.v1.payment_intents.create(
        params={"amount": 4200, "currency": "EUR", "customer": customer.id, "metadata": {"order": "42"}}
    )
    assert (intent.status, intent.amount, intent.currency) == ("requires_payment_method", 4200, "eur")
    updated = client.v1.payment_intents.update(
        intent.id, params={"payment_method": "pm_card_visa", "metadata": {"order": "", "cart": "7"}}
    )
    assert (updated.status, updated.payment_method, updated.metadata.to_dict()) == (
        "requires_confirmation", "pm_card_visa", {"cart": "7"},
    )  # fmt: skip
    confirmed = client.v1.payment_intents.confirm(intent.id)
    assert (confirmed.status, confirmed.amount_received, confirmed.amount_capturable) == (
        "succeeded",
        4200,
        0,
    )
    charge = client.v1.charges.retrieve(str(confirmed.latest_charge))
    assert (charge.payment_intent, charge.captured, charge.amount) == (intent.id, True, 4200)
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    listed = client.v1.payment_intents.list(params={"customer": customer.id})
    assert [i.id for i in listed.data] == [intent.id]
    assert merchant.available("eur") > 0
    assert topics(api_database_url, intent.id) == ["payment_intent.created", "payment_intent.succeeded"]
    events = client.v1.events.list(params={"type": "payment_intent.*"})
    assert {e.type for e in events.data} == {"payment_intent.created", "payment_intent.succeeded"}
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.update(intent.id, params={"amount": 100})
    assert raised.value.code == "payment_intent_unexpected_state"


def test_manual_capture_takes_part_and_releases_the_rest(
    client: stripe.StripeClient, merchant: Merchant, api_database_url: str
) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 5000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True,
                "capture_method": "manual"}
    )  # fmt: skip
    assert (intent.status, intent.amount_capturable, intent.amount_received) == ("requires_capture", 5000, 0)
    assert held(api_database_url, merchant.id) == 5000 and merchant.available() == 0
    too_much = post(merchant, f"/v1/payment_intents/{intent.id}/capture", key="cap", amount_to_capture=5001)
    assert too_much.status_code == 400 and too_much.json()["error"]["param"] == "amount_to_capture"
    assert count(api_database_url, "SELECT count(*) FROM idempotency_keys WHERE key = 'cap'") == 0
    captured = post(merchant, f"/v1/payment_intents/{intent.id}/capture", key="cap", amount_to_capture=3000)
    assert captured.status_code == 200, captured.text
    body = captured.json()
    assert (body["status"], body["amount_received"], body["amount_capturable"]) == ("succeeded", 3000, 0)
    replayed = post(merchant, f"/v1/payment_intents/{intent.id}/capture", key="cap", amount_to_capture=3000)
    assert replayed.headers.get("Idempotent-Replayed") == "true" and replayed.json() == body
    assert held(api_database_url, merchant.id) == 0 and 0 < merchant.available() < 3000
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_captured, charge.amount_refunded) == (3000, 2000)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.cancel(intent.id)
    assert raised.value.code == "payment_intent_unexpected_state"
    assert topics(api_database_url, intent.id) == [
        "payment_intent.created", "payment_intent.amount_capturable_updated", "payment_intent.succeeded",
    ]  # fmt: skip


def test_cancel_releases_an_authorization_and_needs_none(
    client: stripe.StripeClient, merchant: Merchant, api_database_url: str
) -> None:
    authorized = client.v1.payment_intents.create(
        params={"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True,
                "capture_method": "manual"}
    )  # fmt: skip
    canceled = client.v1.payment_intents.cancel(
        authorized.id, params={"cancellation_reason": "requested_by_customer"}
    )
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "requested_by_customer")
    assert canceled.canceled_at is not None and canceled.amount_capturable == 0
    assert held(api_database_url, merchant.id) == 0 and merchant.available() == 0
    charge = client.v1.charges.retrieve(str(authorized.latest_charge))
    assert (charge.captured, charge.refunded) == (False, True)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.capture(authorized.id)

    unconfirmed = client.v1.payment_intents.create(params={"amount": 900, "currency": "usd"})
    dropped = client.v1.payment_intents.cancel(unconfirmed.id, params={"cancellation_reason": "abandoned"})
    assert (dropped.status, dropped.latest_charge) == ("canceled", None)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.payment_intents.confirm(unconfirmed.id, params={"payment_method": "pm_card_visa"})
    assert raised.value.code == "payment_intent_unexpected_state"
    assert topics(api_database_url, unconfirmed.id) == ["payment_intent.created", "payment_intent.canceled"]


def test_a_decline_asks_for_another_payment_method(
    client: stripe.StripeClient, merchant: Merchant, api_database_url: str
) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 700, "currency": "usd"})
    with pytest.raises(stripe.CardError) as raised:
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeDeclined"})
    error = raised.value.error
    assert error is not None and error.payment_intent is not None
    assert error.payment_intent.status == "requires_payment_method"
    assert error.code == "card_declined"
    failed = client.v1.payment_intents.retrieve(intent.id)
    assert failed.payment_method is None and failed.last_payment_error is not None
    assert failed.last_payment_error.payment_method is not None
    assert failed.last_payment_error.payment_method.id == "pm_card_chargeDeclined"
    first_charge = failed.latest_charge

    paid = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_visa"})
    assert (paid.status, paid.last_payment_error, paid.amount_received) == ("succeeded", None, 700)
    assert paid.latest_charge != first_charge
    assert topics(api_database_url, intent.id) == [
        "payment_intent.created", "payment_intent.payment_failed", "payment_intent.succeeded",
    ]  # fmt: skip


def test_an_authorized_intent_expires_after_seven_days(
    merchant: Merchant, admin: httpx.Client, api_database_url: str
) -> None:
    body = {"amount": 1100, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True,
            "capture_method": "manual"}  # fmt: skip
    intent = post(merchant, "/v1/payment_intents", **body).json()
    with psycopg.connect(api_database_url) as conn:
        conn.execute(
            "UPDATE payments SET created_at = now() - interval '7 days 1 minute' WHERE id = %s",
            (intent["latest_charge"],),
        )
    assert admin.post("/v1/admin/recovery/sweep", json={}).status_code == 200
    expired = merchant.client.get(f"/v1/payment_intents/{intent['id']}").json()
    assert (expired["status"], expired["cancellation_reason"]) == ("canceled", "automatic")
    assert held(api_database_url, merchant.id) == 0


def test_refused_requests_leave_nothing_behind(merchant: Merchant, api_database_url: str) -> None:
    def intents() -> int:
        return count(
            api_database_url, "SELECT count(*) FROM payment_intents WHERE merchant_id = %s", merchant.id
        )

    def keys() -> int:
        return count(
            api_database_url, "SELECT count(*) FROM idempotency_keys WHERE merchant_id = %s", merchant.id
        )

    before = (intents(), keys())
    refusals = [
        ({"amount": 100, "currency": "usd", "customer": "cus_missing"}, "customer"),
        ({"amount": 100, "currency": "usd", "confirm": True}, "payment_method"),
        ({"amount": 0, "currency": "usd"}, "amount"),
        ({"amount": 100, "currency": "xxx"}, "currency"),
        ({"amount": 100, "currency": "usd", "capture_method": "later"}, "capture_method"),
        ({"amount": 100, "currency": "usd", "payment_method": "pm_4242424242424242"}, "payment_method"),
        ({"amount": 100, "currency": "usd", "surprise": "1"}, "surprise"),
    ]
    for body, param in refusals:
        refused = post(merchant, "/v1/payment_intents", **body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"].get("param") == param, (body, refused.text)
    assert (intents(), keys()) == before

    intent = post(merchant, "/v1/payment_intents", amount=300, currency="usd").json()
    after_create = (intents(), keys())
    unconfirmable = post(merchant, f"/v1/payment_intents/{intent['id']}/confirm")
    assert unconfirmable.status_code == 400 and unconfirmable.json()["error"]["param"] == "payment_method"
    not_capturable = post(merchant, f"/v1/payment_intents/{intent['id']}/capture")
    assert not_capturable.json()["error"]["code"] == "payment_intent_unexpected_state"
    missing = post(merchant, "/v1/payment_intents/pi_missing/confirm", payment_method="pm_card_visa")
    assert missing.status_code == 404
    bad_reason = post(merchant, f"/v1/payment_intents/{intent['id']}/cancel", cancellation_reason="bored")
    assert bad_reason.status_code == 400
    unknown = merchant.client.post(f"/v1/payment_intents/{intent['id']}", json={"customer": "cus_nope"})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "resource_missing"
    assert (intents(), keys()) == after_create
    assert merchant.client.get(f"/v1/payment_intents/{intent['id']}").json()["status"] == (
        "requires_payment_method"
    )


def test_a_psp_timeout_leaves_it_processing_until_recovery_and_the_retry_answers_once(
    merchant: Merchant, faults: Any, psp_control: httpx.Client, admin: httpx.Client
) -> None:
    faults(timeout_after_capture_rate=1.0, only_paths=["/v1/payment_intents"])
    body = {"amount": 2600, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    pending = post(merchant, "/v1/payment_intents", key="pi-timeout", **body)
    assert pending.status_code == 202, pending.text
    assert pending.json()["status"] == "processing"
    faults()
    assert admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0}).status_code == 200
    settled = merchant.client.get(f"/v1/payment_intents/{pending.json()['id']}").json()
    assert (settled["status"], settled["amount_received"]) == ("succeeded", 2600)
    retried = post(merchant, "/v1/payment_intents", key="pi-timeout", **body)
    assert retried.status_code == 200, retried.text
    intent = retried.json()
    assert (intent["id"], intent["status"]) == (pending.json()["id"], "succeeded")
    assert intent["amount_received"] == 2600
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1
    replayed = post(merchant, "/v1/payment_intents", key="pi-timeout", **body)
    assert replayed.content == retried.content and replayed.headers["Idempotent-Replayed"] == "true"


def test_an_intents_event_reaches_the_merchants_endpoint_signed(
    merchant: Merchant, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers()
    made = merchant.client.post(
        "/v1/webhook_endpoints", json={"url": receiver.url, "enabled_events": ["payment_intent.succeeded"]}
    )
    assert made.status_code == 200, made.text
    secret = made.json()["secret"]
    body = {"amount": 1900, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    intent = post(merchant, "/v1/payment_intents", **body).json()
    until(lambda: receiver.received, timeout_s=30, what="the webhook")
    got = receiver.received[0]
    event = stripe.Webhook.construct_event(got.body.decode(), got.signature, secret)
    assert event["type"] == "payment_intent.succeeded"
    assert (event["data"]["object"]["id"], event["data"]["object"]["status"]) == (intent["id"], "succeeded")


def test_intents_captured_in_part_reconcile_with_the_psp(
    merchant: Merchant, admin: httpx.Client, psp_control: httpx.Client, today: str
) -> None:
    paid = {"currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    manual = {**paid, "capture_method": "manual"}
    captured = post(merchant, "/v1/payment_intents", amount=4000, **manual).json()
    part = post(merchant, f"/v1/payment_intents/{captured['id']}/capture", amount_to_capture=2500)
    assert part.status_code == 200, part.text
    canceled = post(merchant, "/v1/payment_intents", amount=1000, **manual).json()
    assert post(merchant, f"/v1/payment_intents/{canceled['id']}/cancel").status_code == 200
    automatic = post(merchant, "/v1/payment_intents", amount=700, **paid).json()
    psp_control.post("/_emulator/webhooks/flush")
    run = run_day(admin, today)
    ours = set()
    for made in (captured, canceled, automatic):
        charge = merchant.client.get(f"/v1/charges/{made['latest_charge']}").json()
        ours |= {charge["id"], charge["psp_reference"]}
    named = run_discrepancies(admin, run["id"])
    assert not ours & {d["reference"] for d in named}, named
