"""Customers: per merchant, created behind an Idempotency-Key, updated field by field, deleted for good; a
charge naming a customer the merchant does not have is refused before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def create(merchant: Merchant, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return merchant.client.post("/v1/customers", json=body, headers=headers)


def counts(database_url: str, merchant_id: str) -> dict[str, int]:
    """What the merchant has written: customers, charges, keys, outbox rows about its customers."""
    queries = {
        "customers": "SELECT count(*) FROM customers WHERE merchant_id = %s",
        "payments": "SELECT count(*) FROM payments WHERE merchant_id = %s",
        "keys": "SELECT count(*) FROM idempotency_keys WHERE merchant_id = %s",
        "events": "SELECT count(*) FROM outbox o JOIN customers c ON c.id = o.aggregate_id "
        "WHERE c.merchant_id = %s",
    }
    with psycopg.connect(database_url) as conn:
        return {name: conn.execute(sql, (merchant_id,)).fetchone()[0] for name, sql in queries.items()}  # type: ignore[index]


def test_create_retrieve_update_list_delete(merchant: Merchant, api_database_url: str) -> None:
    first = create(merchant, "cus-a", email="ada@example.com", name="Ada", metadata={"tier": "gold"})
    assert first.status_code == 200, first.text
    ada = first.json()
    assert ada["object"] == "customer" and ada["id"].startswith("cus_") and ada["livemode"] is False
    assert ada["email"] == "ada@example.com" and ada["metadata"] == {"tier": "gold"} and ada["phone"] is None
    again = create(merchant, "cus-a", email="ada@example.com", name="Ada", metadata={"tier": "gold"})
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    assert create(merchant, "cus-a", email="other@example.com").status_code == 422
    assert merchant.client.get(f"/v1/customers/{ada['id']}").json() == ada

    form = "metadata[tier]=&metadata[ref]=x-1&phone=%2B15550100&description=regular"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    changed = merchant.client.post(f"/v1/customers/{ada['id']}", content=form, headers=headers)
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        **ada,
        "metadata": {"ref": "x-1"},
        "phone": "+15550100",
        "description": "regular",
    }
    unchanged = merchant.client.post(f"/v1/customers/{ada['id']}", json={"phone": "+15550100"})
    assert unchanged.status_code == 200 and unchanged.json() == changed.json()  # and no event
    cleared = merchant.client.post(f"/v1/customers/{ada['id']}", json={"email": ""}).json()
    assert cleared["email"] is None and cleared["name"] == "Ada"

    bob = create(merchant, email="bob@example.com").json()
    listed = merchant.client.get("/v1/customers").json()
    assert listed["object"] == "list" and [c["id"] for c in listed["data"]] == [bob["id"], ada["id"]]
    assert listed["data"][1] == cleared
    page = merchant.client.get("/v1/customers", params={"limit": 1, "starting_after": bob["id"]}).json()
    assert [c["id"] for c in page["data"]] == [ada["id"]] and page["has_more"] is False
    by_email = merchant.client.get("/v1/customers", params={"email": "bob@example.com"}).json()
    assert [c["id"] for c in by_email["data"]] == [bob["id"]]

    deleted = merchant.client.delete(f"/v1/customers/{bob['id']}")
    assert deleted.status_code == 200 and deleted.json() == {
        "id": bob["id"],
        "object": "customer",
        "deleted": True,
    }
    for gone in (
        merchant.client.get(f"/v1/customers/{bob['id']}"),
        merchant.client.post(f"/v1/customers/{bob['id']}", json={"name": "x"}),
        merchant.client.delete(f"/v1/customers/{bob['id']}"),
    ):
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "resource_missing"
    assert [c["id"] for c in merchant.client.get("/v1/customers").json()["data"]] == [ada["id"]]
    assert merchant.client.get("/v1/customers", params={"email": "bob@example.com"}).json()["data"] == []
    with psycopg.connect(api_database_url) as conn:
        topics = conn.execute(
            "SELECT topic FROM outbox WHERE aggregate_id = ANY(%s) ORDER BY id", ([ada["id"], bob["id"]],)
        ).fetchall()
    assert [t for (t,) in topics] == [
        "customer.created", "customer.updated", "customer.updated", "customer.created", "customer.deleted",
    ]  # fmt: skip


def test_another_merchants_customer_is_a_404(
    merchant: Merchant, new_merchant: Callable[[], Merchant]
) -> None:
    mine = create(merchant, name="mine").json()
    other = new_merchant()
    assert other.client.get(f"/v1/customers/{mine['id']}").status_code == 404
    assert other.client.post(f"/v1/customers/{mine['id']}", json={"name": "stolen"}).status_code == 404
    assert other.client.delete(f"/v1/customers/{mine['id']}").status_code == 404
    assert other.client.get("/v1/customers").json()["data"] == []
    assert other.client.get("/v1/customers", params={"starting_after": mine["id"]}).status_code == 404
    assert merchant.client.get(f"/v1/customers/{mine['id']}").json() == mine


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"email": "no-at-sign"}, "email"),
        ({"name": "n" * 257}, "name"),
        ({"phone": 15550100}, "phone"),
        ({"metadata": {"k": 1}}, "metadata[k]"),
        ({"shipping": {"name": "x"}}, "shipping"),
    ],
)
def test_bad_input_is_a_400_naming_the_param_and_changes_nothing(
    merchant: Merchant, api_database_url: str, body: dict[str, Any], param: str
) -> None:
    before = counts(api_database_url, merchant.id)
    refused = create(merchant, "bad-key", **body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    ada = create(merchant, "kept", name="Ada").json()
    updated = merchant.client.post(f"/v1/customers/{ada['id']}", json=body)
    assert updated.status_code == 400 and updated.json()["error"]["param"] == param
    assert merchant.client.get(f"/v1/customers/{ada['id']}").json() == ada
    assert create(merchant, "bad-key", name="fixed").status_code == 200  # the refused request kept no key
    after = counts(api_database_url, merchant.id)
    assert after["customers"] == before["customers"] + 2 and after["keys"] == before["keys"] + 2
    no_key = merchant.client.post("/v1/customers", json={"name": "x"})
    assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "idempotency_key_missing"
    assert merchant.client.get("/v1/customers", params={"email": "x" * 513}).status_code == 400


def test_a_charge_for_an_unknown_customer_is_refused_and_writes_nothing(
    merchant: Merchant, new_merchant: Callable[[], Merchant], api_database_url: str, psp_control: httpx.Client
) -> None:
    theirs = create(new_merchant(), name="theirs").json()["id"]
    deleted = create(merchant, name="gone").json()["id"]
    assert merchant.client.delete(f"/v1/customers/{deleted}").status_code == 200
    before = counts(api_database_url, merchant.id)
    for unknown in ("cus_doesnotexist", theirs, deleted):
        refused = merchant.charge("charge-key", customer=unknown)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            "resource_missing",
            "customer",
        )
    assert counts(api_database_url, merchant.id) == before
    assert merchant.client.get("/v1/charges").json()["data"] == []

    known = create(merchant, email="c@example.com").json()["id"]
    charged = merchant.charge("charge-key", customer=known)  # the key the refusals left unused
    assert charged.status_code == 200, charged.text
    assert charged.json()["customer"] == known and charged.json()["status"] == "succeeded"
    assert merchant.client.delete(f"/v1/customers/{known}").status_code == 200
    replayed = merchant.charge("charge-key", customer=known)  # a finished request replays, customer or not
    assert replayed.content == charged.content and replayed.headers["Idempotent-Replayed"] == "true"


def test_stripe_sdk_drives_customers(stack: StackInfo, merchant: Merchant) -> None:
    client = stripe.StripeClient(
        merchant.api_key, base_addresses={"api": stack.base_url}, max_network_retries=2
    )
    made = client.v1.customers.create(
        {"email": "sdk@example.com", "name": "SDK", "metadata": {"a": "1", "b": "2"}}
    )
    assert made.object == "customer" and made.email == "sdk@example.com"
    assert client.v1.customers.retrieve(made.id).name == "SDK"
    changed = client.v1.customers.update(made.id, {"metadata": {"a": "", "c": "3"}, "phone": "+15550199"})
    assert (
        changed.metadata is not None
        and changed.metadata.to_dict() == {"b": "2", "c": "3"}
        and changed.phone == "+15550199"
    )
    assert [c.id for c in client.v1.customers.list({"email": "sdk@example.com"}).data] == [made.id]
    assert [c.id for c in client.v1.customers.list({"limit": 1}).auto_paging_iter()] == [made.id]
    charge = client.v1.charges.create(
        {"amount": 500, "currency": "usd", "payment_method": "pm_card_visa", "customer": made.id}
    )
    assert charge.customer == made.id
    gone = client.v1.customers.delete(made.id)
    assert gone.deleted is True and gone.id == made.id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve(made.id)
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.charges.create(
            {"amount": 500, "currency": "usd", "payment_method": "pm_card_visa", "customer": made.id}
        )
    assert refused.value.http_status == 400 and refused.value.param == "customer"
