"""Webhooks to merchants, the pure part: which events an endpoint takes, the retry schedule, the signature.

Stripe's scheme, so a merchant verifies with ``stripe.Webhook.construct_event``: the header
``Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the endpoint's secret>``.
Failed deliveries retry after ``base``, ``2 base``, ``4 base`` … seconds, each wait at most ``cap``, for as
long as the window (3 days by default) lasts since the delivery began; then the delivery has failed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Every event type payray writes (``GET /v1/events``), so every one an endpoint may subscribe to.
EVENT_TYPES = frozenset({
    "charge.succeeded", "charge.pending", "charge.failed", "charge.refunded", "charge.updated",
    "charge.captured", "charge.expired",
    "charge.dispute.created", "charge.dispute.funds_withdrawn", "charge.dispute.closed",
    "charge.dispute.funds_reinstated",
    "refund.created", "refund.updated", "refund.failed",
    "payout.created",
    "customer.created", "customer.updated", "customer.deleted",
    "payment_intent.created", "payment_intent.processing", "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
})  # fmt: skip
#: In ``enabled_events``: every event type.
ALL_EVENTS = "*"
MAX_URL_LENGTH = 2048


class UnknownEventType(ValueError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"Invalid event type: '{event_type[:100]}'")
        self.event_type = event_type


def enabled_events(given: Iterable[str]) -> list[str]:
    """The list as given, in order without repeats; an unknown type raises ``UnknownEventType``."""
    kept: list[str] = []
    for event_type in given:
        if event_type != ALL_EVENTS and event_type not in EVENT_TYPES:
            raise UnknownEventType(event_type)
        if event_type not in kept:
            kept.append(event_type)
    return kept


def subscribed(enabled: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint with ``enabled`` takes events of ``event_type``."""
    return any(e in (ALL_EVENTS, event_type) for e in enabled)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks (not http(s), no host, too long), or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"url is at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "url is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "url must be an http or https URL"
    if not parts.hostname:
        return "url must name a host"
    if any(c.isspace() for c in url):
        return "url must not hold whitespace"
    return None


def is_loopback(url: str) -> bool:
    """Whether ``url`` names a loopback address literally (``127.x.y.z``, ``::1``, ``localhost``)."""
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first): ``base · 2^(attempt-1)``,
    at most ``cap``."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    return min(cap_s, base_s * 2 ** min(attempt - 1, 62))


def next_attempt_after(
    attempt: int, began_s: float, now_s: float, base_s: float, cap_s: float, window_s: float
) -> float | None:
    """When (seconds, on the clock of ``now_s``) to try again after failed attempt ``attempt`` of a delivery
    that began at ``began_s``; None once that would fall past the window: the delivery has failed."""
    at = now_s + retry_delay(attempt, base_s, cap_s)
    return at if at <= began_s + window_s else None


def signature_header(secret: str, payload: bytes, timestamp: int) -> str:
    """The ``Stripe-Signature`` header of ``payload`` sent at ``timestamp`` (Unix seconds)."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the notifier delivers: at most ``concurrency`` requests at once, each given ``timeout_s`` in all,
    retried after ``retry_base_s`` doubling up to ``retry_cap_s`` for ``window_s``; due deliveries are looked
    for every ``poll_s`` (and at once when an event arrives)."""

    timeout_s: float = 10.0
    concurrency: int = 32
    retry_base_s: float = 60.0
    retry_cap_s: float = 6 * 3600.0
    window_s: float = 3 * 86400.0
    poll_s: float = 1.0
    #: post to loopback addresses only (tests, and a stack that must not reach out); others are refused
    loopback_only: bool = False
    #: a PEM file of CAs trusted for https endpoints besides the defaults (``Settings.ca_bundle``)
    ca_bundle: str | None = None

    def next_attempt_after(self, attempt: int, began_s: float, now_s: float) -> float | None:
        return next_attempt_after(attempt, began_s, now_s, self.retry_base_s, self.retry_cap_s, self.window_s)
