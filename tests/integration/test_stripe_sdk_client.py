"""A merchant's existing Stripe integration works against payray unchanged: Stripe's own SDK as the client."""

from __future__ import annotations

import pytest
import stripe

from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def sdk(stack_url: str, merchant: Merchant) -> stripe.StripeClient:
    return stripe.StripeClient(merchant.api_key, base_addresses={"api": stack_url}, max_network_retries=2)


def test_stripe_sdk_creates_retrieves_and_lists_charges(stack: object, merchant: Merchant) -> None:
    client = sdk(stack.base_url, merchant)  # type: ignore[attr-defined]
    created = client.v1.charges.create(
        params={
            "amount": 1999,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "metadata": {"sku": "a-1"},
        },
        options={"idempotency_key": "sdk-1"},
    )
    assert created.status == "succeeded" and created.amount == 1999 and created.metadata["sku"] == "a-1"
    assert client.v1.charges.retrieve(created.id).id == created.id
    assert [c.id for c in client.v1.charges.list(params={"limit": 5}).data] == [created.id]
    again = client.v1.charges.create(
        params={
            "amount": 1999,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "metadata": {"sku": "a-1"},
        },
        options={"idempotency_key": "sdk-1"},
    )
    assert again.id == created.id


def test_stripe_sdk_raises_card_error_on_decline(stack: object, merchant: Merchant) -> None:
    client = sdk(stack.base_url, merchant)  # type: ignore[attr-defined]
    with pytest.raises(stripe.CardError) as raised:
        client.v1.charges.create(
            params={"amount": 500, "currency": "usd", "payment_method": "pm_card_chargeDeclined"}
        )
    assert raised.value.http_status == 402
    assert raised.value.code == "card_declined"


def test_stripe_sdk_raises_idempotency_error_on_a_reused_key(stack: object, merchant: Merchant) -> None:
    client = sdk(stack.base_url, merchant)  # type: ignore[attr-defined]
    client.v1.charges.create(
        params={"amount": 700, "currency": "usd", "payment_method": "pm_card_visa"},
        options={"idempotency_key": "sdk-reused"},
    )
    with pytest.raises(stripe.IdempotencyError):
        client.v1.charges.create(
            params={"amount": 701, "currency": "usd", "payment_method": "pm_card_visa"},
            options={"idempotency_key": "sdk-reused"},
        )


def test_stripe_sdk_authentication_error_on_a_bad_key(stack: object) -> None:
    client = stripe.StripeClient("sk_test_wrong", base_addresses={"api": stack.base_url})  # type: ignore[attr-defined]
    with pytest.raises(stripe.AuthenticationError):
        client.v1.charges.list()


def test_stripe_sdk_refunds_reads_the_balance_and_pays_out(stack: object, merchant: Merchant) -> None:
    client = sdk(stack.base_url, merchant)  # type: ignore[attr-defined]
    charge = client.v1.charges.create(
        params={"amount": 3000, "currency": "usd", "payment_method": "pm_card_visa"},
        options={"idempotency_key": "sdk-for-refund"},
    )
    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 1000, "reason": "duplicate"})
    assert refund.object == "refund" and refund.status == "succeeded" and refund.amount == 1000
    assert client.v1.refunds.retrieve(refund.id).charge == charge.id
    assert [r.id for r in client.v1.refunds.list(params={"charge": charge.id}).data] == [refund.id]
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create(params={"charge": charge.id, "amount": 2001})
    assert too_much.value.code == "amount_too_large"
    [available] = client.v1.balance.retrieve().available
    payout = client.v1.payouts.create(params={"amount": 500, "currency": "usd"})
    assert payout.status == "in_transit" and payout.amount == 500
    assert client.v1.balance.retrieve().available[0].amount == available.amount - 500
