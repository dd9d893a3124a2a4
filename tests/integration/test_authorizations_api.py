"""Charges with ``capture=false``: an authorization held in the ledger, captured in full or in part, or
released when it expires; the money invariants hold throughout."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def held(database_url: str, merchant_id: str, currency: str = "usd") -> int:
    """The merchant's ``authorized_hold`` balance: what its authorizations hold."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(b.credits - b.debits), 0) FROM accounts a"
            " JOIN account_balances b ON b.account_id = a.id"
            " WHERE a.name = 'authorized_hold' AND a.merchant_id = %s AND a.currency = %s",
            (merchant_id, currency),
        ).fetchone()
    assert row is not None
    return int(row[0])


def capture(merchant: Merchant, charge_id: str, key: str | None = None, **body: int) -> httpx.Response:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return merchant.client.post(f"/v1/charges/{charge_id}/capture", json=body, headers=headers)


def test_an_authorization_is_held_then_captured_in_part(merchant: Merchant, api_database_url: str) -> None:
    authorized = merchant.charge(amount=5000, capture=False)
    assert authorized.status_code == 200, authorized.text
    charge = authorized.json()
    assert (charge["status"], charge["captured"], charge["amount_captured"]) == ("succeeded", False, 0)
    assert held(api_database_url, merchant.id) == 5000 and merchant.available() == 0

    captured = capture(merchant, charge["id"], key="cap-1", amount=3000)
    assert captured.status_code == 200, captured.text
    body = captured.json()
    assert (body["captured"], body["amount_captured"], body["amount"]) == (True, 3000, 5000)
    assert held(api_database_url, merchant.id) == 0
    fee = 3000 - merchant.available()
    assert 0 <= fee < 3000  # the fee is taken on what was captured

    replayed = capture(merchant, charge["id"], key="cap-1", amount=3000)
    assert replayed.headers.get("Idempotent-Replayed") == "true" and replayed.json() == body
    again = capture(merchant, charge["id"])
    assert again.status_code == 400 and again.json()["error"]["code"] == "charge_already_captured"
    # what is captured is what may be refunded
    too_much = merchant.refund(charge["id"], amount=3001)
    assert too_much.status_code == 400, too_much.text
    assert merchant.refund(charge["id"], amount=3000).status_code == 200


def test_a_capture_refused_leaves_no_key_behind(merchant: Merchant, api_database_url: str) -> None:
    charge = merchant.charge(amount=2000, capture=False).json()
    refused = capture(merchant, charge["id"], key="cap-big", amount=2001)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "amount"
    assert held(api_database_url, merchant.id) == 2000
    with psycopg.connect(api_database_url) as conn:
        keys = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE merchant_id = %s AND key = 'cap-big'", (merchant.id,)
        ).fetchone()
    assert keys == (0,)
    full = capture(merchant, charge["id"], key="cap-big")  # the same key, now for a capture that can happen
    assert full.status_code == 200 and full.json()["amount_captured"] == 2000
    automatic = merchant.charge(amount=700).json()
    not_held = capture(merchant, automatic["id"])
    assert not_held.status_code == 400 and not_held.json()["error"]["code"] == "charge_not_capturable"
    missing = capture(merchant, "ch_missing")
    assert missing.status_code == 404


def test_an_authorization_expires_after_seven_days(
    merchant: Merchant, admin: httpx.Client, api_database_url: str
) -> None:
    charge = merchant.charge(amount=1200, capture=False).json()
    fresh = merchant.charge(amount=800, capture=False).json()
    with psycopg.connect(api_database_url) as conn:
        conn.execute(
            "UPDATE payments SET created_at = now() - interval '7 days 1 minute' WHERE id = %s",
            (charge["id"],),
        )
    assert admin.post("/v1/admin/recovery/sweep", json={}).status_code == 200
    expired = merchant.client.get(f"/v1/charges/{charge['id']}").json()
    assert (expired["captured"], expired["refunded"], expired["amount_refunded"]) == (False, True, 1200)
    assert merchant.client.get(f"/v1/charges/{fresh['id']}").json()["refunded"] is False
    assert held(api_database_url, merchant.id) == 800 and merchant.available() == 0
    late = capture(merchant, charge["id"])
    assert late.status_code == 400 and late.json()["error"]["code"] == "charge_expired_for_capture"
    with psycopg.connect(api_database_url) as conn:
        topics = [
            r[0]
            for r in conn.execute(
                "SELECT topic FROM outbox WHERE aggregate_id = %s ORDER BY id", (charge["id"],)
            ).fetchall()
        ]
    assert topics == ["charge.succeeded", "charge.expired"]


def test_stripe_sdk_authorizes_with_a_source_token_and_captures(stack: StackInfo, merchant: Merchant) -> None:
    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    charge = client.v1.charges.create(
        params={"amount": 2500, "currency": "USD", "source": "tok_visa", "capture": False}
    )
    assert charge.captured is False and charge.status == "succeeded"
    captured = client.v1.charges.capture(charge.id, params={"amount": 2000})
    assert captured.captured is True and captured.amount_captured == 2000
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.charges.capture(charge.id)
    assert raised.value.code == "charge_already_captured"
    with pytest.raises(stripe.CardError):
        client.v1.charges.create(params={"amount": 100, "currency": "usd", "source": "tok_chargeDeclined"})
