"""Payments routed between Stripe and Braintree through the running stack: by the merchant's priority, on to
the next PSP after a definite failure only, and everything about a payment at the PSP that made it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from ops.stack import StackInfo
from psp.braintree.adapter import BraintreePsp
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.emulator.webhooks import sign
from psp.port import PspChargeResult
from tests.integration.stack_fixtures import WEBHOOK_SECRETS, Merchant, route

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def at_braintree(stack: StackInfo, payment_id: str) -> PspChargeResult | None:
    """What Braintree (the emulator's) holds for the payment, found by its order id."""
    assert stack.psp_api_base

    async def find() -> PspChargeResult | None:
        psp = BraintreePsp(DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY, stack.psp_api_base)
        try:
            return await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    return asyncio.run(find())


def attempts(database_url: str, payment_id: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The payment's current attempt (PSP, key), and the attempts it left behind (PSP, how they ended)."""
    with psycopg.connect(database_url) as conn:
        current = conn.execute(
            "SELECT psp, psp_idempotency_key FROM payments WHERE id = %s", (payment_id,)
        ).fetchone()
        ended = conn.execute(
            "SELECT psp, ended, failure_code FROM payment_attempts WHERE payment_id = %s", (payment_id,)
        ).fetchall()
    assert current is not None
    return current, ended


def test_a_merchant_with_braintree_first_charges_there(
    admin: httpx.Client, merchant: Merchant, stack: StackInfo, api_database_url: str
) -> None:
    route(admin, merchant, "braintree", "stripe")
    charged = merchant.charge()
    assert charged.status_code == 200 and charged.json()["status"] == "succeeded", charged.text
    (psp, _), ended = attempts(api_database_url, charged.json()["id"])
    assert (psp, ended) == ("braintree", [])
    found = at_braintree(stack, charged.json()["id"])
    assert found is not None and found.status == "captured" and found.amount == 1000


def test_a_retryable_decline_at_stripe_fails_over_and_the_refund_follows_the_payment(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    route(admin, merchant, "stripe", "braintree")
    faults(psp="stripe", decline_rate=1.0, decline_code="processing_error")
    charged = merchant.charge(amount=2500)
    assert charged.status_code == 200 and charged.json()["status"] == "succeeded", charged.text
    payment_id = charged.json()["id"]
    (psp, key), ended = attempts(api_database_url, payment_id)
    assert psp == "braintree" and key.endswith("-braintree")
    assert ended == [("stripe", "declined", "processing_error")]
    shown = admin.get(f"/v1/admin/payments/{payment_id}/attempts")
    assert shown.status_code == 200, shown.text
    assert [(a["psp"], a["current"], a["ended"]) for a in shown.json()["data"]] == [
        ("stripe", False, "declined"),
        ("braintree", True, None),
    ]
    assert admin.get("/v1/admin/payments/ch_missing/attempts").status_code == 404
    health = admin.get("/v1/admin/psps")
    assert health.status_code == 200, health.text
    assert {p["psp"]: p["breaker"] for p in health.json()["data"]}.keys() == {"stripe", "braintree"}
    found = at_braintree(stack, payment_id)
    assert found is not None and found.status == "captured" and found.amount == 2500

    # Braintree's rule, not Stripe's: an unsettled sale is refunded whole (a void) or not at all
    partial = merchant.refund(payment_id, amount=1000)
    assert partial.status_code == 200 and partial.json()["status"] == "failed", partial.text
    assert "91506" in partial.json()["failure_reason"]
    refunded = merchant.refund(payment_id)
    assert refunded.status_code == 200 and refunded.json()["status"] == "succeeded", refunded.text
    assert merchant.available() == 0
    after = at_braintree(stack, payment_id)
    assert after is not None and after.status == "declined" and after.failure_code == "canceled"  # voided


@pytest.mark.parametrize("decline_code", ["insufficient_funds", "stolen_card"])
def test_a_hard_decline_at_stripe_never_fails_over(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
    decline_code: str,
) -> None:
    route(admin, merchant, "stripe", "braintree")
    faults(psp="stripe", decline_rate=1.0, decline_code=decline_code)
    declined = merchant.charge()
    assert declined.status_code == 402, declined.text
    payment_id = declined.json()["error"]["charge"]
    assert attempts(api_database_url, payment_id)[0][0] == "stripe"
    assert attempts(api_database_url, payment_id)[1] == []
    assert at_braintree(stack, payment_id) is None


def test_a_timeout_at_stripe_never_fails_over_and_is_resolved_there(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    route(admin, merchant, "stripe", "braintree")
    faults(psp="stripe", timeout_after_capture_rate=1.0, hold_ms=5_000)  # captured; the answer comes too late
    pending = merchant.charge(key="timeout-" + merchant.id)
    assert pending.status_code == 202, pending.text
    payment_id = pending.json()["id"]
    faults()
    assert at_braintree(stack, payment_id) is None
    swept = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert swept.status_code == 200, swept.text
    replayed = merchant.charge(key="timeout-" + merchant.id)
    assert replayed.status_code == 200 and replayed.json()["status"] == "succeeded", replayed.text
    (psp, _), ended = attempts(api_database_url, payment_id)
    assert (psp, ended) == ("stripe", [])
    assert at_braintree(stack, payment_id) is None


def test_the_word_of_a_psp_a_payment_left_never_decides_it_and_its_unknown_is_resolved_where_it_is(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    route(admin, merchant, "stripe", "braintree")
    faults(psp="stripe", decline_rate=1.0, decline_code="processing_error")
    faults(psp="braintree", timeout_after_capture_rate=1.0, hold_ms=5_000)  # captured, answered too late
    pending = merchant.charge(key="left-" + merchant.id, amount=1500)
    assert pending.status_code == 202, pending.text
    payment_id = pending.json()["id"]
    assert attempts(api_database_url, payment_id)[0][0] == "braintree"

    # Stripe's (late, or replayed) word on the attempt the payment left: a decline, which must not decide it
    failed = {"id": "ch_left_" + payment_id, "object": "charge", "amount": 1500, "currency": "usd",
              "status": "failed", "captured": False, "payment_intent": "pi_left_" + payment_id,
              "failure_code": "processing_error", "metadata": {"payray_payment_id": payment_id}}  # fmt: skip
    body = json.dumps({"id": f"evt_left_{payment_id}", "object": "event", "type": "charge.failed",
                       "created": int(time.time()), "data": {"object": failed}}).encode()  # fmt: skip
    signature = sign(WEBHOOK_SECRETS[0], body, int(time.time()))
    told = httpx.post(
        f"{stack.base_url}/v1/webhooks/psp",
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        timeout=30,
    )
    assert told.status_code == 200 and "at braintree now" in told.json()["effect"], told.text

    faults()
    swept = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert swept.status_code == 200, swept.text
    replayed = merchant.charge(key="left-" + merchant.id, amount=1500)
    assert replayed.status_code == 200 and replayed.json()["status"] == "succeeded", replayed.text
    found = at_braintree(stack, payment_id)
    assert found is not None and found.status == "captured"


def test_a_payment_stripe_never_took_goes_on_to_braintree_once_recovery_finds_nothing_there(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    route(admin, merchant, "stripe", "braintree")
    faults(psp="stripe", error_rate=1.0, error_status=503)  # answered 503 before anything happened
    pending = merchant.charge(key="never-took-" + merchant.id, amount=2100)
    assert pending.status_code == 202, pending.text  # a 503 is unknown: no failover yet
    payment_id = pending.json()["id"]
    (psp, _), ended = attempts(api_database_url, payment_id)
    assert (psp, ended) == ("stripe", [])

    faults()
    swept = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert swept.status_code == 200, swept.text
    replayed = merchant.charge(key="never-took-" + merchant.id, amount=2100)
    assert replayed.status_code == 200 and replayed.json()["status"] == "succeeded", replayed.text
    (psp, _), ended = attempts(api_database_url, payment_id)
    assert (psp, ended) == ("braintree", [("stripe", "not_found", None)])
    found = at_braintree(stack, payment_id)
    assert found is not None and found.status == "captured" and found.amount == 2100
