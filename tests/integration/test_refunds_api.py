"""Refunds end to end: HTTP → reservation on the charge → wallet debit → PSP refund (emulator) → answer."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from ledger import store
from ledger.postings import refund_posting, refund_reversal_posting
from payray.money import Money
from tests.integration.psp_queries import refunds_of
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

FEE_BPS = 290


def fee(amount: int) -> int:
    return (amount * FEE_BPS + 5000) // 10000


def charged(merchant: Merchant, amount: int = 1000, **body: Any) -> dict[str, Any]:
    response = merchant.charge(amount=amount, **body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def counts(database_url: str, merchant_id: str) -> tuple[int, int, int]:
    """Refund rows, idempotency keys and ledger refund postings of the merchant."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM refunds WHERE merchant_id = %(m)s),
                   (SELECT count(*) FROM idempotency_keys WHERE merchant_id = %(m)s),
                   (SELECT count(*) FROM ledger_transactions WHERE merchant_id = %(m)s AND kind = 'refund')
            """,
            {"m": merchant_id},
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_a_full_refund_takes_back_what_the_capture_gave(
    merchant: Merchant, psp_control: httpx.Client
) -> None:
    charge = charged(merchant, 2000)
    assert merchant.available() == 2000 - fee(2000)
    response = merchant.refund(charge["id"], reason="requested_by_customer", metadata={"ticket": "7"})
    assert response.status_code == 200, response.text
    refund = response.json()
    assert refund["object"] == "refund" and refund["id"].startswith("re_")
    assert refund["status"] == "succeeded" and refund["amount"] == 2000 and refund["charge"] == charge["id"]
    assert refund["currency"] == "usd" and refund["reason"] == "requested_by_customer"
    assert refund["metadata"] == {"ticket": "7"} and refund["psp_reference"].startswith("re_")
    assert merchant.available() == 0

    after = merchant.client.get(f"/v1/charges/{charge['id']}").json()
    assert after["amount_refunded"] == 2000 and after["refunded"] is True
    assert merchant.client.get(f"/v1/refunds/{refund['id']}").json() == refund
    at_psp = refunds_of(psp_control, charge["psp_reference"])
    assert [(r["amount"], r["status"]) for r in at_psp] == [(2000, "succeeded")]
    again = merchant.refund(charge["id"])
    assert again.status_code == 400 and again.json()["error"]["code"] == "charge_not_refundable"


def test_several_partial_refunds_up_to_the_charge_and_not_a_cent_more(
    merchant: Merchant, psp_control: httpx.Client
) -> None:
    charge = charged(merchant, 1000)
    for amount in (300, 300, 399):
        response = merchant.refund(charge["id"], amount=amount)
        assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    too_much = merchant.refund(charge["id"], amount=2)
    assert too_much.status_code == 400, too_much.text
    assert too_much.json()["error"]["code"] == "amount_too_large"
    assert too_much.json()["error"]["param"] == "amount"
    last = merchant.refund(charge["id"])  # no amount: what is left
    assert last.status_code == 200 and last.json()["amount"] == 1, last.text
    assert merchant.available() == 0
    listed = merchant.client.get("/v1/refunds", params={"charge": charge["id"]}).json()
    assert [r["amount"] for r in listed["data"]] == [1, 399, 300, 300]
    assert sum(r["amount"] for r in refunds_of(psp_control, charge["psp_reference"])) == 1000


def test_concurrent_over_refunds_of_one_charge_never_exceed_it(
    merchant: Merchant, psp_control: httpx.Client
) -> None:
    charge = charged(merchant, 1000)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: merchant.refund(charge["id"], amount=400), range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 2 and statuses.count(400) == 10, [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 400} == {"amount_too_large"}
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json()["amount_refunded"] == 800
    assert sum(r["amount"] for r in refunds_of(psp_control, charge["psp_reference"])) == 800


def test_a_refund_replays_and_a_different_one_with_its_key_is_refused(
    merchant: Merchant, psp_control: httpx.Client
) -> None:
    charge = charged(merchant, 1000)
    first = merchant.refund(charge["id"], "refund-key", amount=500)
    again = merchant.refund(charge["id"], "refund-key", amount=500)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    other = merchant.refund(charge["id"], "refund-key", amount=400)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    with ThreadPoolExecutor(10) as pool:
        burst = list(pool.map(lambda _: merchant.refund(charge["id"], "burst-key", amount=100), range(10)))
    assert {a.status_code for a in burst} <= {200, 409}
    assert len({a.json()["id"] for a in burst if a.status_code == 200}) == 1
    assert sorted(r["amount"] for r in refunds_of(psp_control, charge["psp_reference"])) == [100, 500]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": 0}, 400, None),
        ({"amount": "100"}, 400, None),
        ({"amount": 10.5}, 400, None),
        ({"reason": "because"}, 400, None),
        ({"surprise": 1}, 400, None),
        ({"amount": 1001}, 400, "amount_too_large"),
    ],
)
def test_bad_refunds_change_nothing(
    merchant: Merchant, api_database_url: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    charge = charged(merchant, 1000)
    before = counts(api_database_url, merchant.id)
    response = merchant.refund(charge["id"], **body)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
    assert counts(api_database_url, merchant.id) == before
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json()["amount_refunded"] == 0


def test_only_succeeded_charges_of_ones_own_are_refundable(
    merchant: Merchant, new_merchant: Any, api_database_url: str
) -> None:
    declined = merchant.charge(payment_method="pm_card_chargeDeclined").json()["error"]["charge"]
    response = merchant.refund(declined)
    assert response.status_code == 400 and response.json()["error"]["code"] == "charge_not_refundable"
    stranger = new_merchant()
    theirs = charged(stranger, 500)
    response = merchant.refund(theirs["id"])
    assert response.status_code == 404 and response.json()["error"]["param"] == "charge"
    assert merchant.client.get(f"/v1/refunds?charge={theirs['id']}").status_code == 404
    assert counts(api_database_url, merchant.id)[0] == 0
    missing = merchant.client.get(f"/v1/refunds/re_{uuid.uuid4().hex}")
    assert missing.status_code == 404


def test_a_refund_the_balance_does_not_cover_is_refused_and_leaves_nothing(
    merchant: Merchant, api_database_url: str, admin: httpx.Client
) -> None:
    charge = charged(merchant, 1000)
    payout = merchant.client.post(
        "/v1/payouts", json={"amount": 900, "currency": "usd"}, headers={"Idempotency-Key": "po-1"}
    )
    assert payout.status_code == 200, payout.text
    before = counts(api_database_url, merchant.id)
    response = merchant.refund(charge["id"], "refund-after-payout")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "balance_insufficient"
    assert counts(api_database_url, merchant.id) == before
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json()["amount_refunded"] == 0
    # what the balance does cover still goes through, with the same key (nothing was stored under it)
    partial = merchant.refund(charge["id"], "refund-after-payout", amount=50)
    assert partial.status_code == 200, partial.text


def test_a_psp_timeout_answers_pending_and_a_retry_with_the_key_finishes_it(
    merchant: Merchant, psp_control: httpx.Client, faults: Any
) -> None:
    charge = charged(merchant, 1000)
    faults(error_rate=1.0, error_status=503, only_paths=["/v1/refunds"])
    pending = merchant.refund(charge["id"], "slow-refund", amount=600)
    assert pending.status_code == 202, pending.text
    assert pending.json()["status"] == "pending"
    assert merchant.available() == 1000 - fee(1000) - (600 - (fee(1000) * 600 // 1000))
    faults()
    done = merchant.refund(charge["id"], "slow-refund", amount=600)
    assert done.status_code == 200 and done.json()["status"] == "succeeded", done.text
    assert done.json()["id"] == pending.json()["id"]
    assert [r["amount"] for r in refunds_of(psp_control, charge["psp_reference"])] == [600]


def test_a_refund_the_psp_refuses_is_given_back_to_the_merchant(
    merchant: Merchant, api_database_url: str, faults: Any
) -> None:
    charge = charged(merchant, 1000)
    available = merchant.available()
    faults(decline_rate=1.0, only_paths=["/v1/refunds"])
    response = merchant.refund(charge["id"], amount=400)
    assert response.status_code == 200, response.text
    refund = response.json()
    assert refund["status"] == "failed" and "refund_declined" in refund["failure_reason"]
    assert merchant.available() == available
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json()["amount_refunded"] == 0
    with psycopg.connect(api_database_url) as conn:
        kinds = conn.execute(
            "SELECT kind FROM ledger_transactions WHERE external_ref = %s ORDER BY posted_at", (refund["id"],)
        ).fetchall()
    assert [k for (k,) in kinds] == ["refund", "refund_reversal"]


def test_the_invariants_see_a_refund_the_psp_never_made(admin: httpx.Client, api_database_url: str) -> None:
    merchant_id, refund_id = f"acct_ghost{uuid.uuid4().hex[:8]}", f"re_ghost{uuid.uuid4().hex[:8]}"
    money, fee_back = Money(500, "usd"), Money(0, "usd")
    with psycopg.connect(api_database_url, autocommit=True) as conn:
        [booked] = store.post_batch(conn, [refund_posting(refund_id, merchant_id, money, fee_back)], shard=0)
        assert booked.ok
        report = admin.get("/v1/admin/invariants").json()["psp_matches_ledger"]
        assert not report["ok"] and report["booked_not_refunded"] == 1 and refund_id in report["examples"]
        reversal = refund_reversal_posting(refund_id, merchant_id, money, fee_back)
        [reversed_] = store.post_batch(conn, [reversal], shard=0)
        assert reversed_.ok
    assert admin.get("/v1/admin/invariants").json()["psp_matches_ledger"]["ok"]
