"""Charge and refund updates: metadata and description change, money never moves, each update is an event
carrying the prior values of what it changed (``data.previous_attributes``)."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def events(database_url: str, aggregate_id: str) -> list[tuple[str, dict[str, Any]]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, payload FROM outbox"
            " WHERE aggregate_id = %s AND topic LIKE '%%.updated' ORDER BY id",
            (aggregate_id,),
        ).fetchall()
    return [(topic, payload) for topic, payload in rows]


def ledger_rows(database_url: str, merchant_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE merchant_id = %s", (merchant_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_charges_metadata_is_set_unset_and_emptied(merchant: Merchant, api_database_url: str) -> None:
    charge = merchant.charge(amount=1500, metadata={"order": "1", "gift": "yes"}, description="first").json()
    before, balance = ledger_rows(api_database_url, merchant.id), merchant.available()
    url = f"/v1/charges/{charge['id']}"

    updated = merchant.client.post(
        url, content=b"metadata[order]=2&metadata[gift]=&description=second", headers=FORM
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["metadata"] == {"order": "2"} and body["description"] == "second"
    assert {k: v for k, v in body.items() if k not in ("metadata", "description")} == {
        k: v for k, v in charge.items() if k not in ("metadata", "description")
    }
    assert merchant.client.get(url).json() == body
    emptied = merchant.client.post(url, content=b"metadata=", headers=FORM).json()
    assert emptied["metadata"] == {} and emptied["description"] == "second"

    assert ledger_rows(api_database_url, merchant.id) == before and merchant.available() == balance
    topics = events(api_database_url, charge["id"])
    assert [topic for topic, _ in topics] == ["charge.updated", "charge.updated"]
    assert topics[-1][1]["metadata"] == {}
    emptying, first = merchant.client.get("/v1/events", params={"type": "charge.updated"}).json()["data"]
    assert first["data"] == {
        "object": body,
        "previous_attributes": {"description": "first", "metadata": {"order": "1", "gift": "yes"}},
    }
    assert emptying["data"] == {"object": emptied, "previous_attributes": {"metadata": {"order": "2"}}}
    assert merchant.client.get(f"/v1/events/{first['id']}").json() == first


def test_an_update_that_changes_nothing_is_no_event(merchant: Merchant, api_database_url: str) -> None:
    charge = merchant.charge(metadata={"a": "1"}, description="same").json()
    again = merchant.client.post(f"/v1/charges/{charge['id']}", json={"metadata": {"a": "1", "b": ""}})
    assert again.status_code == 200 and again.json() == charge
    refund = merchant.refund(charge["id"], amount=100).json()
    assert merchant.client.post(f"/v1/refunds/{refund['id']}", json={"metadata": {}}).json() == refund
    assert events(api_database_url, charge["id"]) == [] and events(api_database_url, refund["id"]) == []


def test_a_refunds_metadata_is_updated(merchant: Merchant, api_database_url: str) -> None:
    charge = merchant.charge(amount=900).json()
    refund = merchant.refund(charge["id"], amount=100, metadata={"ticket": "7"}).json()
    updated = merchant.client.post(f"/v1/refunds/{refund['id']}", json={"metadata": {"ticket": "", "n": "1"}})
    assert updated.status_code == 200, updated.text
    assert updated.json()["metadata"] == {"n": "1"} and updated.json()["amount"] == 100
    assert [topic for topic, _ in events(api_database_url, refund["id"])] == ["refund.updated"]
    [event] = merchant.client.get("/v1/events", params={"type": "refund.updated"}).json()["data"]
    assert event["data"]["object"] == updated.json()
    assert event["data"]["previous_attributes"] == {"metadata": {"ticket": "7", "n": None}}
    [created] = merchant.client.get("/v1/events", params={"type": "refund.created"}).json()["data"]
    assert "previous_attributes" not in created["data"]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/charges/ch_missing", {"metadata": {"a": "1"}}, 404, "id"),
        ("/v1/refunds/re_missing", {"metadata": {"a": "1"}}, 404, "id"),
        ("CHARGE", {"amount": 5}, 400, "amount"),
        ("CHARGE", {"metadata": "x"}, 400, "metadata"),
        ("CHARGE", {"metadata": {f"k{i}": "v" for i in range(51)}}, 400, "metadata"),
        ("CHARGE", {"description": "d" * 1001}, 400, "description"),
    ],
)
def test_a_bad_update_changes_nothing(
    merchant: Merchant, api_database_url: str, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    charge = merchant.charge(metadata={"keep": "me"}).json()
    answer = merchant.client.post(path.replace("CHARGE", f"/v1/charges/{charge['id']}"), json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["doc_url"].startswith("https://stripe.com/docs/error-codes/")
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json() == charge
    assert events(api_database_url, charge["id"]) == []


def test_another_merchants_charge_answers_404(
    merchant: Merchant, new_merchant: Any, api_database_url: str
) -> None:
    charge = merchant.charge().json()
    other: Merchant = new_merchant()
    answer = other.client.post(f"/v1/charges/{charge['id']}", json={"metadata": {"a": "1"}})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "resource_missing"
    assert events(api_database_url, charge["id"]) == []


def test_the_sdk_updates_charges_and_refunds(stack: StackInfo, merchant: Merchant) -> None:
    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    charge = client.v1.charges.create(
        params={"amount": 2000, "currency": "USD", "payment_method": "pm_card_visa", "metadata": {"a": "1"}}
    )
    assert charge.currency == "usd"
    updated = client.v1.charges.update(
        charge.id, params={"metadata": {"a": "", "b": "2"}, "description": "d"}
    )
    assert updated.metadata.to_dict() == {"b": "2"} and updated.description == "d"
    assert client.v1.charges.update(charge.id, params={"metadata": ""}).metadata.to_dict() == {}
    emptying, first = client.v1.events.list(params={"type": "charge.updated"}).data
    assert first.data.previous_attributes.to_dict() == {
        "description": None,
        "metadata": {"a": "1", "b": None},
    }
    assert emptying.data.previous_attributes.to_dict() == {"metadata": {"b": "2"}}
    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 500})
    assert client.v1.refunds.update(refund.id, params={"metadata": {"r": "1"}}).metadata.to_dict() == {
        "r": "1"
    }
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.charges.update("ch_missing", params={"metadata": {"a": "1"}})
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"


def test_updates_are_described(stack: StackInfo) -> None:
    schema = httpx.get(f"{stack.base_url}/openapi.json", timeout=30).json()
    for path in ("/v1/charges/{charge_id}", "/v1/refunds/{refund_id}"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "metadata" in body["properties"]
