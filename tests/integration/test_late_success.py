"""A late success: a PSP that a payment had left (after a definite failure there) captures after all. Found by
that PSP's webhook or by the recovery sweep, it is given back there and booked both ways, and the three
invariants hold across both PSPs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import braintree
import httpx
import psycopg
import pytest

from ops.stack import EMULATOR_API_KEY, StackInfo
from psp.braintree.transport import environment_of
from psp.emulator.braintree import notifications, xml_codec
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from tests.integration.polling import until
from tests.integration.stack_fixtures import Merchant, route

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def failed_over(
    admin: httpx.Client, merchant: Merchant, faults: Callable[..., None], first: str, second: str
) -> str:
    """A payment that failed over from ``first`` (a retryable decline there) and succeeded at ``second``."""
    route(admin, merchant, first, second)
    faults(psp=first, decline_rate=1.0, decline_code="processing_error")
    charged = merchant.charge(amount=1800)
    assert charged.status_code == 200 and charged.json()["status"] == "succeeded", charged.text
    faults()
    payment_id: str = charged.json()["id"]
    return payment_id


def late_rows(database_url: str, payment_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT id, psp, state, found_by, amount FROM late_successes WHERE payment_id = %s", (payment_id,)
        ).fetchall()


def ledger_movements(database_url: str, late_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kind FROM ledger_transactions WHERE external_ref = %s ORDER BY kind", (late_id,)
        ).fetchall()
    return [row[0] for row in rows]


def stripe_late_capture(stack: StackInfo, merchant: Merchant, payment_id: str, amount: int) -> str:
    """Stripe's capture of the payment after all: a PaymentIntent with the payment's id in its metadata."""
    assert stack.psp_api_base
    answer = httpx.post(
        f"{stack.psp_api_base}/v1/payment_intents",
        headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
        data={
            "amount": amount,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": "true",
            "metadata[payray_payment_id]": payment_id,
            "metadata[payray_merchant_id]": merchant.id,
        },
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
    intent: str = answer.json()["id"]
    return intent


def braintree_gateway(stack: StackInfo) -> Any:
    assert stack.psp_api_base
    config = braintree.Configuration(
        environment_of(stack.psp_api_base), DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY
    )
    return braintree.BraintreeGateway(config)


def braintree_late_sale(stack: StackInfo, payment_id: str) -> str:
    """Braintree's sale for the payment after all, submitted for settlement."""
    result = braintree_gateway(stack).transaction.sale(
        {
            "amount": "18.00",
            "payment_method_nonce": "fake-valid-nonce",
            "order_id": payment_id,
            "options": {"submit_for_settlement": True},
        }
    )
    assert result.is_success, result
    sale: str = result.transaction.id
    return sale


def test_a_late_capture_at_stripe_is_found_by_its_webhook_refunded_and_booked_both_ways(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    payment_id = failed_over(admin, merchant, faults, "stripe", "braintree")
    before = merchant.available()
    intent = stripe_late_capture(stack, merchant, payment_id, 1800)
    rows = until(
        lambda: [r for r in late_rows(api_database_url, payment_id) if r[2] == "reversed"],
        what="the late success given back",
    )
    ((late_id, psp, _, found_by, amount),) = rows
    assert (psp, found_by, amount) == ("stripe", "webhook", 1800)
    assert ledger_movements(api_database_url, late_id) == ["capture", "refund"]
    assert stack.psp_api_base
    refunded = httpx.get(
        f"{stack.psp_api_base}/v1/payment_intents/{intent}",
        headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
        params={"expand[]": "latest_charge"},
        timeout=30,
    ).json()
    assert refunded["latest_charge"]["amount_refunded"] == 1800
    assert merchant.available() == before  # the late capture and its refund net to nothing

    # reconciliation matches both movements with Stripe's report rows: neither is a difference
    now = datetime.now(UTC)
    if 60 <= now.hour * 3600 + now.minute * 60 + now.second < 86_340:  # the rows and the run share a day
        run = admin.post("/v1/reconciliation/runs", json={"date": now.date().isoformat()}).json()
        assert run["status"] == "succeeded", run
        with psycopg.connect(api_database_url) as conn:
            (refund_reference,) = conn.execute(
                "SELECT psp_refund_reference FROM late_successes WHERE id = %s", (late_id,)
            ).fetchone() or (None,)
            filed = conn.execute(
                "SELECT reference FROM recon_discrepancies WHERE run_id = %s", (run["id"],)
            ).fetchall()
        assert refund_reference is not None
        assert not {intent, refund_reference} & {row[0] for row in filed}


@pytest.mark.usefixtures("no_webhooks")
def test_the_recovery_sweep_finds_a_late_capture_no_webhook_told_of(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    payment_id = failed_over(admin, merchant, faults, "stripe", "braintree")
    stripe_late_capture(stack, merchant, payment_id, 1800)
    assert late_rows(api_database_url, payment_id) == []
    swept = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert swept.status_code == 200, swept.text
    assert swept.json()["counts"].get("late_successes_reversed", 0) == 1, swept.json()
    ((late_id, psp, state, found_by, _),) = late_rows(api_database_url, payment_id)
    assert (psp, state, found_by) == ("stripe", "reversed", "recovery")
    assert ledger_movements(api_database_url, late_id) == ["capture", "refund"]


@pytest.mark.usefixtures("no_webhooks")
def test_a_late_sale_at_braintree_is_found_by_the_sweep_and_voided(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    payment_id = failed_over(admin, merchant, faults, "braintree", "stripe")
    sale = braintree_late_sale(stack, payment_id)
    swept = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert swept.status_code == 200, swept.text
    ((late_id, psp, state, found_by, amount),) = late_rows(api_database_url, payment_id)
    assert (psp, state, found_by, amount) == ("braintree", "reversed", "recovery", 1800)
    assert braintree_gateway(stack).transaction.find(sale).status == "voided"  # unsettled: voided whole
    assert ledger_movements(api_database_url, late_id) == ["capture", "refund"]


def signed_notification(kind: str, subject_name: str, subject: dict[str, Any]) -> dict[str, str]:
    """A notification signed as Braintree signs them, with the emulator merchant's keys."""
    body = {"timestamp": datetime.now(UTC), "kind": kind, "subject": {subject_name: subject}}
    payload = notifications.payload(xml_codec.encode("notification", body))
    signature = notifications.signature(DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY, payload)
    return {"bt_signature": signature, "bt_payload": payload}


def test_braintree_webhooks_are_verified_applied_once_and_find_a_late_sale(
    admin: httpx.Client,
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Callable[..., None],
) -> None:
    payment_id = failed_over(admin, merchant, faults, "braintree", "stripe")
    sale = braintree_late_sale(stack, payment_id)
    subject = {"id": sale, "status": "settled", "type": "sale", "amount": "18.00",
               "currency_iso_code": "USD", "order_id": payment_id}  # fmt: skip
    form = signed_notification("transaction_settled", "transaction", subject)
    webhook = f"{stack.base_url}/v1/webhooks/braintree"

    forged = httpx.post(webhook, data={**form, "bt_signature": form["bt_signature"][:-4] + "0000"})
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "signature_invalid", forged.text
    assert httpx.post(webhook, data={"bt_payload": form["bt_payload"]}).status_code == 400
    assert late_rows(api_database_url, payment_id) == []

    first = httpx.post(webhook, data=form, timeout=30)
    assert first.status_code == 200 and "late success" in first.json()["effect"], first.text
    again = httpx.post(webhook, data=form, timeout=30)
    assert again.status_code == 200 and again.json()["effect"] == "duplicate: already applied"
    ((late_id, psp, state, found_by, _),) = late_rows(api_database_url, payment_id)
    assert (psp, state, found_by) == ("braintree", "reversed", "webhook")
    assert ledger_movements(api_database_url, late_id) == ["capture", "refund"]


def test_a_braintree_dispute_opens_the_payments_dispute(
    admin: httpx.Client, merchant: Merchant, stack: StackInfo, api_database_url: str
) -> None:
    route(admin, merchant, "braintree")
    charged = merchant.charge(amount=1200)
    assert charged.status_code == 200, charged.text
    with psycopg.connect(api_database_url) as conn:
        row = conn.execute(
            "SELECT psp_reference FROM payments WHERE id = %s", (charged.json()["id"],)
        ).fetchone()
    assert row is not None
    assert stack.psp_api_base
    opened = httpx.post(
        f"{stack.psp_api_base}/_emulator/braintree/disputes", json={"transaction_id": row[0]}, timeout=30
    )
    assert opened.status_code == 200, opened.text

    def dispute() -> Any:
        return merchant.client.get("/v1/disputes").json()["data"]

    disputes = until(dispute, what="the dispute")
    assert [(d["charge"], d["amount"], d["status"]) for d in disputes] == [
        (charged.json()["id"], 1200, "needs_response")
    ]
