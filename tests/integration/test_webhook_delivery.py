"""Webhooks to merchants, end to end: a charge's event reaches a real receiver on loopback, signed so that
``stripe.Webhook.construct_event`` accepts it; failures are retried on the backoff and every attempt is
recorded; an endpoint failing for the whole window is disabled; events go only where they are enabled; an
event can be resent by hand; and a slow endpoint slows neither the charge nor another endpoint.

The stack retries on a test's clock (``WEBHOOK_DELIVERY`` in ``stack_fixtures``)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
import stripe

from ops.cli import main as cli
from ops.stack import StackInfo
from payray.webhooks import retry_delay
from tests.integration.polling import until
from tests.integration.stack_fixtures import WEBHOOK_DELIVERY, Merchant
from tests.integration.webhook_receiver import Receiver

pytestmark = pytest.mark.integration


def endpoint(merchant: Merchant, receiver: Receiver, events: list[str] | None = None) -> dict[str, Any]:
    made = merchant.client.post(
        "/v1/webhook_endpoints", json={"url": receiver.url, "enabled_events": events or ["*"]}
    )
    assert made.status_code == 200, made.text
    return dict(made.json())


def attempts(database_url: str, endpoint_id: str) -> list[tuple[str, int, int | None, str | None, float]]:
    """(event type, attempt, HTTP status, error, attempted at) of every attempt to the endpoint, in order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT o.topic, a.attempt, a.http_status, a.error, extract(epoch FROM a.attempted_at)::float8
            FROM webhook_attempts a JOIN outbox o ON o.id = a.outbox_id
            WHERE a.endpoint_id = %s ORDER BY a.id
            """,
            (endpoint_id,),
        ).fetchall()
    return [(t, n, s, e, at) for t, n, s, e, at in rows]


def delivery_status(database_url: str, endpoint_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT o.topic, d.status FROM webhook_deliveries d JOIN outbox o ON o.id = d.outbox_id"
            " WHERE d.endpoint_id = %s ORDER BY d.id",
            (endpoint_id,),
        ).fetchall()
    return [(t, s) for t, s in rows]


def events(merchant: Merchant, event_type: str) -> list[dict[str, Any]]:
    return list(merchant.client.get("/v1/events", params={"type": event_type}).json()["data"])


def test_a_charges_event_arrives_signed_and_verifies(
    merchant: Merchant, receivers: Callable[..., Receiver], api_database_url: str
) -> None:
    receiver = receivers()
    made = endpoint(merchant, receiver, ["charge.succeeded"])
    sent_at = time.time()
    charge = merchant.charge(amount=1234).json()
    until(lambda: receiver.received, timeout_s=30, what="the webhook")
    got = receiver.received[0]
    event = stripe.Webhook.construct_event(got.body.decode(), got.signature, made["secret"])
    assert event["type"] == "charge.succeeded" and event["data"]["object"]["id"] == charge["id"]
    stored = merchant.client.get(f"/v1/events/{event['id']}").json()
    sent = json.loads(got.body)
    assert {k: v for k, v in sent.items() if k != "pending_webhooks"} == {
        k: v for k, v in stored.items() if k != "pending_webhooks"
    }
    assert sent["pending_webhooks"] == 1  # this very delivery, not yet succeeded while it was sent
    until(lambda: delivery_status(api_database_url, made["id"]) == [("charge.succeeded", "succeeded")])
    assert merchant.client.get(f"/v1/events/{event['id']}").json()["pending_webhooks"] == 0
    [(_, attempt, status, error, _)] = attempts(api_database_url, made["id"])
    assert (attempt, status, error) == (1, 200, None)
    print(f"charge to webhook received: {got.at - sent_at:.3f} s")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(got.body.decode(), got.signature, "whsec_someone_elses")


def test_a_failing_endpoint_is_retried_on_the_backoff_until_it_answers(
    merchant: Merchant, receivers: Callable[..., Receiver], api_database_url: str
) -> None:
    receiver = receivers(plan=lambda n: (500, 0.0) if n <= 2 else (200, 0.0))
    made = endpoint(merchant, receiver, ["charge.succeeded"])
    merchant.charge(amount=777)
    until(lambda: delivery_status(api_database_url, made["id"]) == [("charge.succeeded", "succeeded")])
    tried = attempts(api_database_url, made["id"])
    assert [(n, status, error) for _, n, status, error, _ in tried] == [(1, 500, None), (2, 500, None),
                                                                        (3, 200, None)]  # fmt: skip
    base, cap = WEBHOOK_DELIVERY["webhook_retry_base_s"], WEBHOOK_DELIVERY["webhook_retry_cap_s"]
    for (_, n, _, _, before), (_, _, _, _, after) in itertools.pairwise(tried):
        assert after - before >= retry_delay(n, base, cap) - 0.05
    # each attempt is signed anew, and each verifies
    for got in receiver.received:
        stripe.Webhook.construct_event(got.body.decode(), got.signature, made["secret"])


def fanned_out(database_url: str, charge_id: str) -> bool:
    """Whether the notifier took the charge's event: its deliveries, if any endpoint wants it, exist then
    (they are written in the transaction that records the event)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM notification_deliveries n JOIN outbox o ON o.id = n.outbox_id"
            " WHERE o.aggregate_id = %s",
            (charge_id,),
        ).fetchone()
    return row is not None and row[0] > 0


def test_an_endpoint_failing_for_the_whole_window_is_disabled(
    merchant: Merchant, receivers: Callable[..., Receiver], api_database_url: str
) -> None:
    receiver = receivers(plan=lambda n: (503, 0.0))
    made = endpoint(merchant, receiver, ["charge.succeeded"])
    merchant.charge(amount=555)
    window = WEBHOOK_DELIVERY["webhook_retry_window_s"]
    until(
        lambda: merchant.client.get(f"/v1/webhook_endpoints/{made['id']}").json()["status"] == "disabled",
        timeout_s=window + 20,
        what="the endpoint disabled",
    )
    assert delivery_status(api_database_url, made["id"]) == [("charge.succeeded", "failed")]
    tried = attempts(api_database_url, made["id"])
    assert len(tried) >= 4 and all(status == 503 for _, _, status, _, _ in tried)
    assert tried[-1][4] - tried[0][4] <= window + 1.0
    # a disabled endpoint gets nothing more
    received = len(receiver.received)
    charge = merchant.charge(amount=556).json()
    until(lambda: fanned_out(api_database_url, charge["id"]), what="the new event handed to the endpoints")
    assert len(receiver.received) == received
    assert delivery_status(api_database_url, made["id"]) == [("charge.succeeded", "failed")]


def test_a_dead_endpoint_is_retried_and_each_refusal_recorded(
    merchant: Merchant, api_database_url: str
) -> None:
    with socket.socket() as taken:  # a port nobody listens on once it is closed
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    made = merchant.client.post(
        "/v1/webhook_endpoints", json={"url": f"http://127.0.0.1:{port}/gone", "enabled_events": ["*"]}
    ).json()
    merchant.charge(amount=4242)
    until(lambda: len(attempts(api_database_url, made["id"])) >= 2)
    for _, _, status, error, _ in attempts(api_database_url, made["id"])[:2]:
        assert status is None and error and "Connect" in error


def test_events_go_only_to_the_endpoints_that_enable_them(
    merchant: Merchant, receivers: Callable[..., Receiver], api_database_url: str
) -> None:
    refunds, everything = receivers(), receivers()
    only_refunds = endpoint(merchant, refunds, ["charge.refunded"])
    endpoint(merchant, everything, ["*"])
    charge = merchant.charge(amount=3000).json()
    assert merchant.refund(charge["id"], amount=1000).status_code == 200
    until(lambda: len(everything.received) >= 3, what="charge.succeeded, refund.created, charge.refunded")
    until(lambda: delivery_status(api_database_url, only_refunds["id"]) == [("charge.refunded", "succeeded")])
    assert [json.loads(r.body)["type"] for r in refunds.received] == ["charge.refunded"]
    assert sorted(json.loads(r.body)["type"] for r in everything.received) == [
        "charge.refunded", "charge.succeeded", "refund.created"
    ]  # fmt: skip
    assert delivery_status(api_database_url, only_refunds["id"]) == [("charge.refunded", "succeeded")]


def test_an_event_is_resent_by_hand(
    merchant: Merchant, receivers: Callable[..., Receiver], admin: httpx.Client, api_database_url: str,
    stack: StackInfo, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    first, second = receivers(), receivers()
    one = endpoint(merchant, first, ["charge.succeeded"])
    two = endpoint(merchant, second, ["charge.succeeded"])
    merchant.charge(amount=999)
    until(lambda: first.received and second.received)
    event_id = json.loads(first.received[0].body)["id"]
    again = admin.post(f"/v1/admin/events/{event_id}/resend", json={"endpoint": one["id"]})
    assert again.status_code == 200, again.text
    assert again.json() == {"object": "webhook_resend", "event": event_id, "endpoints": [one["id"]]}
    until(lambda: len(first.received) == 2)
    resent = first.received[1]
    assert json.loads(resent.body)["id"] == event_id
    stripe.Webhook.construct_event(resent.body.decode(), resent.signature, one["secret"])
    until(lambda: [n for _, n, _, _, _ in attempts(api_database_url, one["id"])] == [1, 2])
    everywhere = admin.post(f"/v1/admin/events/{event_id}/resend", json={})
    assert sorted(everywhere.json()["endpoints"]) == sorted([one["id"], two["id"]])
    until(lambda: len(first.received) == 3 and len(second.received) == 2)
    target = ["--url", stack.base_url, "--admin-key", stack.admin_key]
    assert cli(["webhooks", "resend", event_id, "--endpoint", two["id"], *target]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"] == [two["id"]]
    until(lambda: len(second.received) == 3)
    assert len(first.received) == 3
    # refusals: an unknown event, another merchant's or an unknown endpoint, a merchant's key
    assert admin.post("/v1/admin/events/evt_nope/resend", json={}).status_code == 404
    unknown = admin.post(f"/v1/admin/events/{event_id}/resend", json={"endpoint": "we_nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "endpoint"
    assert merchant.client.post(f"/v1/admin/events/{event_id}/resend", json={}).status_code == 401


def test_a_slow_endpoint_slows_neither_the_charge_nor_another_endpoint(
    merchant: Merchant, receivers: Callable[..., Receiver], api_database_url: str
) -> None:
    timeout = WEBHOOK_DELIVERY["webhook_timeout_s"]
    slow = receivers(plan=lambda n: (200, timeout + 2.0))
    fast = receivers()
    slow_endpoint = endpoint(merchant, slow, ["charge.succeeded"])
    endpoint(merchant, fast, ["charge.succeeded"])
    started = time.monotonic()
    charges = [merchant.charge(amount=100 + i) for i in range(3)]
    charged_in = time.monotonic() - started
    assert all(c.status_code == 200 for c in charges)
    until(lambda: len(fast.received) == 3, timeout_s=30)
    fast_in = time.monotonic() - started
    assert fast_in < timeout + 2.0, f"the fast endpoint waited on the slow one ({fast_in:.2f} s)"
    until(lambda: any(e for _, _, _, e, _ in attempts(api_database_url, slow_endpoint["id"])))
    timed_out = [a for a in attempts(api_database_url, slow_endpoint["id"]) if a[3]]
    assert "timed out" in (timed_out[0][3] or "") and timed_out[0][2] is None
    print(f"3 charges in {charged_in:.3f} s; the fast endpoint had all 3 after {fast_in:.3f} s")
