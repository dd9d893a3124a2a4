"""The pure rules of webhooks to merchants: the signature Stripe's SDK verifies, the retry schedule within its
window, and which endpoints take which events."""

from __future__ import annotations

import hmac
import json
import time
from types import SimpleNamespace

import pytest
import stripe

from payray.intent import TOPICS
from payray.settings import Settings
from payray.webhooks import (
    EVENT_TYPES,
    DeliveryPolicy,
    UnknownEventType,
    enabled_events,
    is_loopback,
    next_attempt_after,
    retry_delay,
    signature_header,
    subscribed,
    url_problem,
)
from serve_app.flows.charge import announced
from serve_app.stores.answers import ANNOUNCED_AGAIN

SECRET = "whsec_test_secret"


def test_the_signature_verifies_with_the_stripe_sdk() -> None:
    payload = json.dumps({"id": "evt_1", "object": "event", "type": "charge.succeeded"}).encode()
    header = signature_header(SECRET, payload, int(time.time()))
    event = stripe.Webhook.construct_event(payload.decode(), header, SECRET)
    assert event["id"] == "evt_1"


def test_a_signature_with_another_secret_or_body_is_refused() -> None:
    payload = b'{"id":"evt_1"}'
    header = signature_header(SECRET, payload, int(time.time()))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.decode(), header, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event('{"id":"evt_2"}', header, SECRET)


def test_the_signature_is_stripes_scheme() -> None:
    assert signature_header("k", b"body", 1700000000) == (
        "t=1700000000,v1=" + hmac.new(b"k", b"1700000000.body", "sha256").hexdigest()
    )


def test_retries_double_from_the_base_up_to_the_cap() -> None:
    assert [retry_delay(n, 60, 3600) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10_000, 60, 3600) == 3600
    with pytest.raises(ValueError):
        retry_delay(0, 60, 3600)


def test_no_attempt_is_scheduled_past_the_window() -> None:
    assert next_attempt_after(1, began_s=0, now_s=0, base_s=1, cap_s=10, window_s=5) == 1
    assert next_attempt_after(3, began_s=0, now_s=1, base_s=1, cap_s=10, window_s=5) == 5
    assert next_attempt_after(3, began_s=0, now_s=1.5, base_s=1, cap_s=10, window_s=5) is None


def test_the_default_schedule_retries_for_three_days() -> None:
    policy = DeliveryPolicy()
    now, attempt, times = 0.0, 1, []
    while (at := policy.next_attempt_after(attempt, 0.0, now)) is not None:
        times.append(at)
        now, attempt = at, attempt + 1
    assert 3 * 86400 - 6 * 3600 <= times[-1] <= 3 * 86400
    assert 15 <= len(times) <= 25  # the first within minutes, then at most six hours apart


def test_endpoints_take_their_types_or_all() -> None:
    assert subscribed(["charge.succeeded"], "charge.succeeded")
    assert not subscribed(["charge.succeeded"], "charge.refunded")
    assert subscribed(["*"], "customer.deleted")
    assert not subscribed([], "charge.succeeded")


def test_enabled_events_refuses_an_unknown_type_and_drops_repeats() -> None:
    assert enabled_events(["charge.succeeded", "*", "charge.succeeded"]) == ["charge.succeeded", "*"]
    with pytest.raises(UnknownEventType, match=r"charge\.exploded"):
        enabled_events(["charge.exploded"])
    assert "charge.dispute.funds_withdrawn" in EVENT_TYPES


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "javascript:alert(1)", "http://", "https:///path", "http://a b", "x" * 3000],
)
def test_a_url_that_cannot_receive_webhooks_is_refused(url: str) -> None:
    assert url_problem(url) is not None


@pytest.mark.parametrize("url", ["https://example.com/hooks", "http://127.0.0.1:8080/x?y=1"])
def test_an_http_url_with_a_host_is_taken(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "loopback"),
    [("http://127.0.0.1:9/x", True), ("http://[::1]/x", True), ("http://localhost/x", True),
     ("https://example.com/x", False), ("http://10.0.0.1/x", False), ("http://127.0.0.1.example.com", False)],
)  # fmt: skip
def test_loopback_is_told_by_the_address_itself(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_the_delivery_settings_come_from_the_environment() -> None:
    env = {"PAYRAY_WEBHOOK_RETRY_BASE_S": "0.5", "PAYRAY_WEBHOOK_RETRY_WINDOW_S": "30",
           "PAYRAY_WEBHOOK_TIMEOUT_S": "2", "PAYRAY_WEBHOOK_CONCURRENCY": "4"}  # fmt: skip
    policy = Settings.from_env(env).webhook_delivery()
    assert (policy.retry_base_s, policy.window_s, policy.timeout_s, policy.concurrency) == (0.5, 30, 2, 4)
    assert policy.poll_s == 0.5
    with pytest.raises(ValueError, match="PAYRAY_WEBHOOK_RETRY_BASE_S"):
        Settings.from_env({"PAYRAY_WEBHOOK_RETRY_BASE_S": "0"})


def test_every_event_payray_announces_can_be_subscribed_to() -> None:
    """An endpoint may enable each topic the flows write to the outbox, intents' and authorizations' too."""
    made = {*TOPICS.values(), *ANNOUNCED_AGAIN, *ANNOUNCED_AGAIN.values()}
    for capture_method, reason in (("automatic", None), ("manual", "expired"), ("manual", "requested")):
        charge = SimpleNamespace(capture_method=capture_method, cancellation_reason=reason)
        made |= {announced(charge, what) for what in ("capture", "hold", "release")}  # type: ignore[arg-type]
    assert made <= EVENT_TYPES, made - EVENT_TYPES
