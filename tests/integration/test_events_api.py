"""Events: every state change of a merchant's objects is an event of Stripe's type, listed newest first and
retrievable for 30 days, to the merchant alone; with httpx and with Stripe's own SDK."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
import ray
import stripe

from serve_app.stores.events import DELETE_EXPIRED
from serve_app.workers.recovery import SWEEPER_NAME
from tests.integration.polling import until
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]


def events(merchant: Merchant, **params: Any) -> list[dict[str, Any]]:
    response = merchant.client.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


def types_of(merchant: Merchant, **params: Any) -> list[str]:
    return [e["type"] for e in events(merchant, **params)]


def test_a_charge_then_a_refund_are_events_newest_first(merchant: Merchant) -> None:
    key = uuid.uuid4().hex
    charge = merchant.charge(key=key, amount=2000).json()
    refund = merchant.refund(charge["id"], amount=500).json()
    listed = events(merchant)
    # the refund and the charge it refunded are announced in one statement, in either order
    assert {(e["type"], e["data"]["object"]["id"]) for e in listed[:2]} == {
        ("refund.created", refund["id"]),
        ("charge.refunded", charge["id"]),
    }
    assert [(e["type"], e["data"]["object"]["id"]) for e in listed[2:]] == [
        ("charge.succeeded", charge["id"])
    ]
    [refunded] = [e for e in listed if e["type"] == "charge.refunded"]
    assert (
        refunded["data"]["object"]["amount_refunded"] == 500
        and refunded["data"]["object"]["refunded"] is False
    )
    charged = listed[2]
    assert charged["id"].startswith("evt_") and charged["object"] == "event"
    assert charged["livemode"] is False and charged["pending_webhooks"] == 0 and charged["api_version"]
    assert charged["request"] == {"id": None, "idempotency_key": key}
    assert charged["data"]["object"] == {**charge}
    assert isinstance(charged["created"], int) and abs(charged["created"] - charge["created"]) <= 2
    assert merchant.client.get(f"/v1/events/{charged['id']}").json() == charged
    paged = merchant.client.get("/v1/events", params={"limit": 1}).json()
    assert paged["has_more"] is True and paged["url"] == "/v1/events"
    after = events(merchant, limit=2, starting_after=paged["data"][0]["id"])
    assert [e["id"] for e in after] == [e["id"] for e in listed[1:]]


def test_a_failed_charge_and_a_payout_are_events_of_their_types(merchant: Merchant) -> None:
    assert merchant.charge(amount=900, payment_method="pm_card_chargeDeclined").status_code == 402
    assert merchant.charge(amount=5000).status_code == 200
    payout = merchant.client.post(
        "/v1/payouts", json={"amount": 1000, "currency": "usd"}, headers={"Idempotency-Key": "po-ev"}
    )
    assert payout.status_code == 200, payout.text
    assert types_of(merchant) == ["payout.created", "charge.succeeded", "charge.failed"]


def test_another_merchants_event_is_a_404(merchant: Merchant, new_merchant: Any) -> None:
    merchant.charge(amount=1500)
    [theirs] = events(merchant)
    other: Merchant = new_merchant()
    missing = other.client.get(f"/v1/events/{theirs['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert other.client.get("/v1/events").json()["data"] == []
    cursor = other.client.get("/v1/events", params={"starting_after": theirs["id"]})
    assert cursor.status_code == 404 and cursor.json()["error"]["param"] == "starting_after"


def test_the_type_and_created_filters(merchant: Merchant) -> None:
    charge = merchant.charge(amount=3000).json()
    merchant.refund(charge["id"], amount=100)
    merchant.charge(amount=900, payment_method="pm_card_chargeDeclined")
    assert types_of(merchant, type="charge.succeeded") == ["charge.succeeded"]
    assert types_of(merchant, type="charge.*")[0] == "charge.failed"
    assert sorted(types_of(merchant, type="charge.*")) == [
        "charge.failed",
        "charge.refunded",
        "charge.succeeded",
    ]
    assert types_of(merchant, type="refund.*") == ["refund.created"]
    assert types_of(merchant, type="payout.created") == []
    both = [("types[0]", "refund.created"), ("types[1]", "charge.failed")]
    assert [e["type"] for e in merchant.client.get("/v1/events", params=both).json()["data"]] == [
        "charge.failed",
        "refund.created",
    ]
    created = charge["created"]
    assert len(events(merchant, **{"created[gte]": created})) == 4
    assert events(merchant, **{"created[gt]": created + 3600}) == []
    assert events(merchant, **{"created[lt]": created - 3600}) == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"type": "Charge.Succeeded!"}, "type"),
        ({"type": "charge.succeeded", "types[0]": "charge.failed"}, "types"),
        ({"types[]": "x" * 101}, "types"),
        ({"created[gt]": "yesterday"}, "created[gt]"),
        ({"created": "-5"}, "created"),
        ({"colour": "blue"}, "colour"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_param(
    merchant: Merchant, params: dict[str, str], param: str
) -> None:
    merchant.charge(amount=1200)
    before = events(merchant)
    refused = merchant.client.get("/v1/events", params=params)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert refused.json()["error"]["param"] == param
    assert events(merchant) == before


def test_more_than_twenty_types_are_refused(merchant: Merchant) -> None:
    params = [(f"types[{i}]", "charge.succeeded") for i in range(21)]
    refused = merchant.client.get("/v1/events", params=params)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "types"


def test_the_stripe_sdk_lists_and_retrieves_events(stack: Any, merchant: Merchant) -> None:
    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    charge = client.v1.charges.create(
        params={"amount": 2500, "currency": "usd", "payment_method": "pm_card_visa"},
        options={"idempotency_key": "sdk-ev"},
    )
    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 700})
    listed = client.v1.events.list(params={"limit": 10})
    assert sorted((e.type, e.data.object["id"]) for e in listed.data) == [
        ("charge.refunded", charge.id),
        ("charge.succeeded", charge.id),
        ("refund.created", refund.id),
    ]
    only = client.v1.events.list(params={"types": ["charge.succeeded", "charge.failed"]})
    assert [e.type for e in only.data] == ["charge.succeeded"]
    found = client.v1.events.retrieve(only.data[0].id)
    assert found.id == only.data[0].id and found.request.idempotency_key == "sdk-ev"
    assert [e.id for e in client.v1.events.list(params={"limit": 1}).auto_paging_iter()] == [
        e.id for e in listed.data
    ]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.retrieve("evt_nope")


def test_ending_before_pages_towards_newer_events_within_the_filters(stack: Any, merchant: Merchant) -> None:
    for amount in (1000, 1100, 1200, 1300, 1400):
        assert merchant.charge(amount=amount).status_code == 200
    assert merchant.charge(amount=900, payment_method="pm_card_chargeDeclined").status_code == 402
    listed = events(merchant)
    ids = [e["id"] for e in listed]
    assert [e["type"] for e in listed] == ["charge.failed"] + ["charge.succeeded"] * 5
    oldest = ids[-1]

    nearest = merchant.client.get("/v1/events", params={"ending_before": oldest, "limit": 2}).json()
    assert [e["id"] for e in nearest["data"]] == ids[-3:-1] and nearest["has_more"] is True
    last = merchant.client.get("/v1/events", params={"ending_before": ids[2], "limit": 2}).json()
    assert [e["id"] for e in last["data"]] == ids[:2] and last["has_more"] is False
    assert [e["id"] for e in events(merchant, ending_before=oldest, type="charge.succeeded")] == ids[1:5]
    assert events(merchant, ending_before=ids[1], type="charge.succeeded") == []
    created = listed[-1]["created"]
    assert [e["id"] for e in events(merchant, ending_before=oldest, **{"created[gte]": created})] == ids[:-1]
    assert events(merchant, ending_before=oldest, **{"created[gt]": created + 3600}) == []

    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    backwards = client.v1.events.list(params={"ending_before": oldest, "limit": 2}).auto_paging_iter()
    assert [e.id for e in backwards] == ids[-2::-1]
    only = {"ending_before": oldest, "limit": 1, "type": "charge.succeeded"}
    succeeded = client.v1.events.list(params=only)
    assert [e.id for e in succeeded.auto_paging_iter()] == ids[4:0:-1]


def test_another_merchants_event_is_no_cursor_either_way(merchant: Merchant, new_merchant: Any) -> None:
    merchant.charge(amount=1500)
    [theirs] = events(merchant)
    other: Merchant = new_merchant()
    cursor = other.client.get("/v1/events", params={"ending_before": theirs["id"]})
    assert cursor.status_code == 404 and cursor.json()["error"]["param"] == "ending_before"
    both = other.client.get("/v1/events", params={"ending_before": "evt_a", "starting_after": "evt_b"})
    assert both.status_code == 400 and both.json()["error"]["param"] == "ending_before"


def test_a_dispute_is_announced_as_stripe_does(merchant: Merchant, psp_control: httpx.Client) -> None:
    charge = merchant.charge(amount=3000).json()
    opened = psp_control.post(
        "/_emulator/disputes", json={"payment_intent": charge["psp_reference"], "amount": 1200}
    ).json()
    until(
        lambda: (
            types_of(merchant, type="charge.dispute.*")
            == ["charge.dispute.funds_withdrawn", "charge.dispute.created"]
        )
    )
    psp_control.post(f"/_emulator/disputes/{opened['id']}/close", json={"status": "won"})
    expected = ["charge.dispute.funds_reinstated", "charge.dispute.closed"]
    until(lambda: types_of(merchant, type="charge.dispute.*")[:2] == expected)
    [closed] = events(merchant, type="charge.dispute.closed")
    assert closed["data"]["object"]["status"] == "won" and closed["data"]["object"]["charge"] == charge["id"]


def _age(database_url: str, merchant_id: str, days: int) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE outbox SET created_at = now() - %s * interval '1 day' WHERE merchant_id = %s",
            (days, merchant_id),
        )


def _kept(conn: psycopg.Connection[Any], merchant_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM outbox WHERE merchant_id = %s", (merchant_id,)).fetchone()
    return int(row[0]) if row else 0


def _count(database_url: str, merchant_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        return _kept(conn, merchant_id)


def test_events_are_kept_30_days_and_then_deleted_once_delivered(
    merchant: Merchant, api_database_url: str
) -> None:
    merchant.charge(amount=1100)
    [event] = events(merchant)
    _age(api_database_url, merchant.id, 29)
    assert merchant.client.get(f"/v1/events/{event['id']}").status_code == 200
    _age(api_database_url, merchant.id, 31)
    assert events(merchant) == []
    assert merchant.client.get(f"/v1/events/{event['id']}").status_code == 404
    with psycopg.connect(api_database_url) as conn:  # one not yet published stays, however old
        conn.execute(
            "INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, created_at)"
            " VALUES ('charge.succeeded', 'ch_x', '{}', %s, now() - interval '40 days')",
            (merchant.id,),
        )
        conn.execute(DELETE_EXPIRED, {"limit": 1000})
        unpublished = "SELECT count(*) FROM outbox WHERE merchant_id = %s AND aggregate_id = 'ch_x'"
        assert conn.execute(unpublished, (merchant.id,)).fetchone() == (1,)
        conn.rollback()
    sweeper = ray.get_actor(SWEEPER_NAME, namespace=STACK_NAMESPACE)
    until(lambda: ray.get(sweeper.expire_events.remote()) >= 0 and _count(api_database_url, merchant.id) == 0)


def test_a_customer_created_updated_and_deleted_is_three_events(merchant: Merchant) -> None:
    created = merchant.client.post(
        "/v1/customers", data={"email": "ada@example.com"}, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    assert created.status_code == 200, created.text
    customer = created.json()["id"]
    assert merchant.client.post(f"/v1/customers/{customer}", data={"name": "Ada"}).status_code == 200
    assert merchant.client.delete(f"/v1/customers/{customer}").status_code == 200
    about = [e for e in events(merchant, type="customer.*") if e["data"]["object"]["id"] == customer]
    assert [e["type"] for e in about] == ["customer.deleted", "customer.updated", "customer.created"]
    assert about[1]["data"]["previous_attributes"] == {"name": None}
    assert "previous_attributes" not in about[0]["data"] and "previous_attributes" not in about[2]["data"]


def test_customer_updated_holds_the_prior_values_of_what_changed(stack: Any, merchant: Merchant) -> None:
    client = stripe.StripeClient(merchant.api_key, base_addresses={"api": stack.base_url})
    customer = client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"tier": "gold", "since": "2020"}}
    )
    metadata = {"tier": "", "since": "2021", "vip": "y"}
    client.v1.customers.update(customer.id, params={"email": "ada@example.org", "metadata": metadata})
    client.v1.customers.update(customer.id, params={"name": "Ada"})  # no change, no event
    [updated] = client.v1.events.list(params={"type": "customer.updated"}).data
    assert updated.data.object["email"] == "ada@example.org"
    assert updated.data.previous_attributes.to_dict() == {
        "email": "ada@example.com",
        "metadata": {"tier": "gold", "since": "2020", "vip": None},
    }
