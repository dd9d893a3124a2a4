"""Webhook endpoints: Stripe's shapes for create, retrieve, update, list and delete, the secret shown once,
refusals that leave nothing behind, and one merchant's endpoints out of another's reach."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import psycopg
import pytest
import stripe

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = pytest.mark.integration

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def endpoint_rows(database_url: str, merchant_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_endpoints WHERE merchant_id = %s", (merchant_id,))
        return int(row.fetchone()[0])  # type: ignore[index]


def test_create_shows_the_secret_once_and_retrieve_never(merchant: Merchant) -> None:
    created = merchant.client.post(
        "/v1/webhook_endpoints",
        json={"url": "https://example.com/hooks", "enabled_events": ["charge.succeeded", "charge.refunded"],
              "description": "orders", "metadata": {"team": "pay"}},
    )  # fmt: skip
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["id"].startswith("we_") and body["object"] == "webhook_endpoint"
    assert body["secret"].startswith("whsec_") and body["status"] == "enabled"
    assert body["enabled_events"] == ["charge.succeeded", "charge.refunded"]
    assert (body["application"], body["livemode"], body["api_version"]) == (None, False, None)
    assert body["metadata"] == {"team": "pay"} and body["description"] == "orders"
    got = merchant.client.get(f"/v1/webhook_endpoints/{body['id']}").json()
    assert "secret" not in got
    assert got == {k: v for k, v in body.items() if k != "secret"}


def test_update_changes_what_is_sent_and_disables(merchant: Merchant) -> None:
    form = urlencode({"url": "https://example.com/a", "enabled_events[0]": "*", "metadata[a]": "1",
                      "metadata[b]": "2", "description": "first"})  # fmt: skip
    made = merchant.client.post("/v1/webhook_endpoints", content=form, headers=FORM).json()
    assert made["enabled_events"] == ["*"]
    change = urlencode({"metadata[a]": "", "metadata[c]": "3", "description": "", "disabled": "true",
                        "enabled_events[0]": "customer.created"})  # fmt: skip
    changed = merchant.client.post(f"/v1/webhook_endpoints/{made['id']}", content=change, headers=FORM)
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["metadata"] == {"b": "2", "c": "3"} and body["description"] is None
    assert body["status"] == "disabled" and body["enabled_events"] == ["customer.created"]
    assert body["url"] == "https://example.com/a" and "secret" not in body
    again = merchant.client.post(f"/v1/webhook_endpoints/{made['id']}", json={"disabled": False}).json()
    assert again["status"] == "enabled"


def test_list_pages_both_ways_and_delete(merchant: Merchant) -> None:
    made = [
        merchant.client.post(
            "/v1/webhook_endpoints", json={"url": f"https://example.com/{i}", "enabled_events": ["*"]}
        ).json()["id"]
        for i in range(3)
    ]
    first = merchant.client.get("/v1/webhook_endpoints", params={"limit": 2}).json()
    assert first["object"] == "list" and first["url"] == "/v1/webhook_endpoints"
    assert [e["id"] for e in first["data"]] == made[::-1][:2] and first["has_more"]
    rest = merchant.client.get("/v1/webhook_endpoints", params={"starting_after": made[1]}).json()
    assert [e["id"] for e in rest["data"]] == [made[0]] and not rest["has_more"]
    newer = merchant.client.get("/v1/webhook_endpoints", params={"ending_before": made[0]}).json()
    assert [e["id"] for e in newer["data"]] == made[:0:-1]
    gone = merchant.client.delete(f"/v1/webhook_endpoints/{made[1]}")
    assert gone.json() == {"id": made[1], "object": "webhook_endpoint", "deleted": True}
    assert merchant.client.get(f"/v1/webhook_endpoints/{made[1]}").status_code == 404
    assert merchant.client.delete(f"/v1/webhook_endpoints/{made[1]}").status_code == 404
    left = merchant.client.get("/v1/webhook_endpoints").json()["data"]
    assert [e["id"] for e in left] == [made[2], made[0]]
    bad = merchant.client.get("/v1/webhook_endpoints", params={"status": "enabled"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://example.com/x", "enabled_events": ["*"]}, "url"),
        ({"url": "https://", "enabled_events": ["*"]}, "url"),
        ({"url": "https://example.com", "enabled_events": ["charge.exploded"]}, "enabled_events"),
        ({"url": "https://example.com", "enabled_events": []}, "enabled_events"),
        ({"url": "https://example.com"}, "enabled_events"),
        ({"enabled_events": ["*"]}, "url"),
        ({"url": "https://example.com", "enabled_events": ["*"], "secret": "whsec_mine"}, "secret"),
    ],
)
def test_a_refused_create_leaves_no_endpoint(
    merchant: Merchant, api_database_url: str, body: dict[str, object], param: str
) -> None:
    refused = merchant.client.post("/v1/webhook_endpoints", json=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert endpoint_rows(api_database_url, merchant.id) == 0


def test_a_refused_update_changes_nothing(merchant: Merchant) -> None:
    made = merchant.client.post(
        "/v1/webhook_endpoints", json={"url": "https://example.com/x", "enabled_events": ["*"]}
    ).json()
    refusals = [({"enabled_events": ["nope.never"]}, "enabled_events"), ({"url": "mailto:a@b"}, "url"),
                ({"url": ""}, "url"), ({"disabled": "maybe"}, "disabled")]  # fmt: skip
    for body, param in refusals:
        refused = merchant.client.post(f"/v1/webhook_endpoints/{made['id']}", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    got = merchant.client.get(f"/v1/webhook_endpoints/{made['id']}").json()
    assert got == {k: v for k, v in made.items() if k != "secret"}


def test_another_merchants_endpoint_is_missing(new_merchant: Callable[[], Merchant]) -> None:
    owner, other = new_merchant(), new_merchant()
    made = owner.client.post(
        "/v1/webhook_endpoints", json={"url": "https://example.com/x", "enabled_events": ["*"]}
    ).json()
    url = f"/v1/webhook_endpoints/{made['id']}"
    for response in (other.client.get(url), other.client.post(url, json={"disabled": True}),
                     other.client.delete(url)):  # fmt: skip
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "resource_missing"
    assert other.client.get("/v1/webhook_endpoints").json()["data"] == []
    assert owner.client.get(url).json()["status"] == "enabled"


@pytest.fixture
def classic_stripe(stack: StackInfo, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """stripe-python's module-level resources (``stripe.WebhookEndpoint``) pointed at the stack."""
    monkeypatch.setattr(stripe, "api_base", stack.base_url)
    monkeypatch.setattr(stripe, "max_network_retries", 2)
    yield


@pytest.mark.usefixtures("classic_stripe")
def test_stripe_sdk_drives_webhook_endpoints(merchant: Merchant) -> None:
    key = merchant.api_key
    made = stripe.WebhookEndpoint.create(
        api_key=key, url="https://example.com/sdk", enabled_events=["charge.succeeded"], metadata={"a": "1"}
    )
    assert made.object == "webhook_endpoint" and made.secret.startswith("whsec_")
    assert stripe.WebhookEndpoint.retrieve(made.id, api_key=key).url == "https://example.com/sdk"
    changed = stripe.WebhookEndpoint.modify(
        made.id, api_key=key, enabled_events=["charge.succeeded", "charge.refunded"], metadata={"a": ""},
        disabled=True,
    )  # fmt: skip
    assert changed.status == "disabled" and changed.enabled_events == ["charge.succeeded", "charge.refunded"]
    assert changed.metadata.to_dict() == {}
    listed = stripe.WebhookEndpoint.list(api_key=key, limit=1)
    assert [e.id for e in listed.auto_paging_iter()] == [made.id]
    gone = stripe.WebhookEndpoint.delete(made.id, api_key=key)
    assert gone.deleted is True and gone.id == made.id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        stripe.WebhookEndpoint.retrieve(made.id, api_key=key)
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe.WebhookEndpoint.create(api_key=key, url="https://example.com", enabled_events=["nope.never"])
    assert refused.value.param == "enabled_events"
