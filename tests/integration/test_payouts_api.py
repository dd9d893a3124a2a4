"""Payouts: bounded by what the merchant's wallet holds, even when many arrive at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def payout(merchant: Merchant, key: str, **body: Any) -> httpx.Response:
    payload = {"amount": 100, "currency": "usd", **body}
    return merchant.client.post("/v1/payouts", json=payload, headers={"Idempotency-Key": key})


def in_transit(database_url: str, merchant_id: str) -> int:
    """What the ledger moved to ``payouts_in_transit`` for the merchant."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            """
            SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e
              JOIN ledger_transactions t ON t.id = e.transaction_id
              JOIN accounts a ON a.id = e.account_id
             WHERE t.merchant_id = %s AND t.kind = 'payout' AND a.name = 'payouts_in_transit'
            """,
            (merchant_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_payout_moves_available_funds_and_replays(merchant: Merchant, api_database_url: str) -> None:
    assert merchant.charge(amount=10_000).status_code == 200
    available = merchant.available()
    first = payout(merchant, "po-a", amount=4_000)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["object"] == "payout" and body["status"] == "in_transit" and body["id"].startswith("po_")
    assert body["amount"] == 4_000 and body["currency"] == "usd"
    again = payout(merchant, "po-a", amount=4_000)
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    assert merchant.available() == available - 4_000
    assert in_transit(api_database_url, merchant.id) == 4_000
    assert merchant.client.get(f"/v1/payouts/{body['id']}").json() == body
    assert [p["id"] for p in merchant.client.get("/v1/payouts").json()["data"]] == [body["id"]]
    reused = payout(merchant, "po-a", amount=1)
    assert reused.status_code == 422


def test_concurrent_payouts_never_overdraw(merchant: Merchant, api_database_url: str) -> None:
    assert merchant.charge(amount=10_000).status_code == 200
    available = merchant.available()  # 9,710
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: payout(merchant, f"po-{i}", amount=1_000), range(16)))
    paid = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 400]
    assert len(paid) == available // 1_000 and len(paid) + len(refused) == 16, [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in refused} == {"balance_insufficient"}
    assert merchant.available() == available - 1_000 * len(paid) >= 0
    assert in_transit(api_database_url, merchant.id) == 1_000 * len(paid)


@pytest.mark.parametrize(
    "body",
    [{"amount": 0}, {"amount": -5}, {"amount": "100"}, {"currency": "usdx"}, {"currency": None}, {"x": 1}],
)
def test_bad_payouts_change_nothing(merchant: Merchant, body: dict[str, Any], api_database_url: str) -> None:
    assert merchant.charge(amount=5_000).status_code == 200
    available = merchant.available()
    response = payout(merchant, "po-bad", **body)
    assert response.status_code == 400, response.text
    assert merchant.available() == available and in_transit(api_database_url, merchant.id) == 0
    assert merchant.client.get("/v1/payouts").json()["data"] == []
    # nothing was stored under the key: a corrected request may use it
    assert payout(merchant, "po-bad", amount=100).status_code == 200


def test_a_payout_over_the_balance_leaves_nothing(merchant: Merchant, new_merchant: Any) -> None:
    assert merchant.charge(amount=1_000).status_code == 200
    response = payout(merchant, "po-big", amount=5_000)
    assert response.status_code == 400 and response.json()["error"]["code"] == "balance_insufficient"
    assert merchant.client.get("/v1/payouts").json()["data"] == []
    assert payout(merchant, "po-big", amount=500).status_code == 200
    other = new_merchant()
    mine = merchant.client.get("/v1/payouts").json()["data"][0]["id"]
    assert other.client.get(f"/v1/payouts/{mine}").status_code == 404


REFUSALS = ("balance_insufficient", "charge_not_refundable", "amount_too_large")


def test_concurrent_payouts_and_refunds_never_overdraw(merchant: Merchant) -> None:
    charges = [merchant.charge(amount=2_000).json() for _ in range(4)]
    available = merchant.available()  # 4 x 1,942 = 7,768

    def act(i: int) -> tuple[str, httpx.Response]:
        if i % 2:
            return "refund", merchant.refund(charges[i // 2 % 4]["id"], amount=2_000)
        return "payout", payout(merchant, f"po-mix-{i}", amount=1_500)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(act, range(12)))
    moved = 0
    for kind, answer in answers:
        assert answer.status_code in (200, 400), answer.text
        if answer.status_code == 400:
            assert answer.json()["error"]["code"] in REFUSALS
        elif kind == "payout":
            moved += 1_500
        else:
            moved += 2_000 - (2_000 * 290 + 5_000) // 10_000  # a refund takes back what its charge gave
    assert merchant.available() == available - moved >= 0
