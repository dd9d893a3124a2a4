"""Stripe's conventions, over HTTP and through Stripe's SDK: headers, error links, currency case, lists."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

LISTS = ["/v1/charges", "/v1/refunds", "/v1/payouts", "/v1/disputes"]


def sdk(stack: StackInfo, merchant: Merchant) -> stripe.StripeClient:
    return stripe.StripeClient(
        merchant.api_key, base_addresses={"api": stack.base_url}, max_network_retries=0
    )


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def test_every_answer_has_a_request_id_and_a_version(merchant: Merchant) -> None:
    answers = [
        merchant.charge(),
        merchant.client.get("/v1/charges/ch_missing"),
        merchant.client.get("/v1/charges", params={"limit": 0}),
        merchant.client.get("/v1/nowhere"),
        merchant.client.get("/v1/charges/ch_%01"),
    ]
    request_ids = [answer.headers["Request-Id"] for answer in answers]
    assert all(rid.startswith("req_") for rid in request_ids) and len(set(request_ids)) == len(answers)
    assert all(answer.headers["Stripe-Version"] for answer in answers)
    pinned = merchant.client.get("/v1/charges", headers={"Stripe-Version": "2024-06-20"})
    assert pinned.headers["Stripe-Version"] == "2024-06-20"
    bad = merchant.client.get("/v1/charges", headers={"Stripe-Version": "latest!"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Stripe-Version"


def test_errors_link_stripes_page_for_their_code(merchant: Merchant) -> None:
    missing = merchant.client.get("/v1/charges/ch_missing").json()["error"]
    assert missing["doc_url"] == "https://stripe.com/docs/error-codes/resource-missing"
    declined = merchant.charge(payment_method="pm_card_chargeDeclined").json()["error"]
    assert declined["doc_url"] == "https://stripe.com/docs/error-codes/card-declined"


def test_currency_codes_in_any_case(merchant: Merchant) -> None:
    charge = merchant.charge(amount=5000, currency="USD")
    assert charge.status_code == 200, charge.text
    assert charge.json()["currency"] == "usd"
    payout = merchant.client.post(
        "/v1/payouts", json={"amount": 100, "currency": "Usd"}, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert payout.status_code == 200, payout.text
    assert payout.json()["currency"] == "usd"
    assert merchant.charge(currency="XYZ").json()["error"]["param"] == "currency"


def test_ending_before_pages_backwards_newest_first(merchant: Merchant) -> None:
    made = [merchant.charge(amount=100 + i).json()["id"] for i in range(5)]  # oldest first
    page = merchant.client.get("/v1/charges", params={"limit": 2, "ending_before": made[0]}).json()
    assert ids(page) == [made[2], made[1]] and page["has_more"]
    page = merchant.client.get("/v1/charges", params={"limit": 2, "ending_before": made[2]}).json()
    assert ids(page) == [made[4], made[3]] and not page["has_more"]
    page = merchant.client.get("/v1/charges", params={"ending_before": made[4]}).json()
    assert ids(page) == [] and not page["has_more"]
    refund = merchant.refund(made[0], amount=10).json()["id"]
    newer = merchant.refund(made[0], amount=10).json()["id"]
    page = merchant.client.get("/v1/refunds", params={"charge": made[0], "ending_before": refund}).json()
    assert ids(page) == [newer]


def test_created_filters(merchant: Merchant) -> None:
    made = [merchant.charge(amount=200 + i).json() for i in range(3)]
    first, last = made[0]["created"], made[-1]["created"]
    every = [c["id"] for c in made][::-1]

    def listed(**params: Any) -> list[str]:
        answer = merchant.client.get("/v1/charges", params=params)
        assert answer.status_code == 200, answer.text
        return ids(answer.json())

    assert listed(**{"created[gte]": first, "created[lte]": last}) == every
    assert listed(**{"created[lt]": first}) == []
    assert listed(**{"created[gt]": last}) == []
    assert listed(created=last) == [c["id"] for c in made[::-1] if c["created"] == last]
    refunded = merchant.refund(made[0]["id"]).json()
    assert ids(merchant.client.get("/v1/refunds", params={"created[gte]": refunded["created"]}).json()) == [
        refunded["id"]
    ]
    assert (
        merchant.client.get("/v1/refunds", params={"created[lt]": refunded["created"]}).json()["data"] == []
    )


@pytest.mark.parametrize("url", LISTS)
def test_bad_list_parameters_are_refused_by_name(merchant: Merchant, url: str) -> None:
    cases = [
        ({"starting_after": "x_1", "ending_before": "x_2"}, "ending_before"),
        ({"created[gte]": "yesterday"}, "created[gte]"),
        ({"created[since]": "1"}, "created[since]"),
        ({"colour": "red"}, "colour"),
        ({"ending_before": "x_missing"}, "ending_before"),
    ]
    for params, param in cases:
        answer = merchant.client.get(url, params=params)
        assert answer.status_code in (400, 404), (params, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param and error["doc_url"].startswith("https://stripe.com/docs/error-codes/")
    every = merchant.client.get(url, params={"created[gte]": 0, "created[lte]": 253_402_300_799})
    assert every.status_code == 200, every.text


def test_the_sdk_pages_both_ways_and_filters_by_created(stack: StackInfo, merchant: Merchant) -> None:
    client = sdk(stack, merchant)
    made = [merchant.charge(amount=300 + i).json() for i in range(5)]  # oldest first
    made_ids = [c["id"] for c in made]
    forwards = client.v1.charges.list(params={"limit": 2}).auto_paging_iter()
    assert [c.id for c in forwards] == made_ids[::-1]
    backwards = client.v1.charges.list(params={"limit": 2, "ending_before": made_ids[0]}).auto_paging_iter()
    assert [c.id for c in backwards] == made_ids[1:]  # Stripe's SDK walks from the cursor outwards
    since = client.v1.charges.list(params={"created": {"gte": made[0]["created"]}, "limit": 100})
    assert {c.id for c in since.data} == set(made_ids)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.charges.list(params={"starting_after": made_ids[1], "ending_before": made_ids[0]})
    assert refused.value.param == "ending_before"
