"""Braintree webhook notifications, built and signed as the gateway does; pure.

``bt_payload`` is the base64 (MIME lines, as Python's ``encodebytes``) of a ``<notification>`` document;
``bt_signature`` is ``public_key|HMAC-SHA1(key=SHA1(private_key), bt_payload)``: exactly what the SDK's
``WebhookNotificationGateway.parse`` checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from psp.emulator.braintree import xml_codec

KINDS = ("transaction_settled", "transaction_settlement_declined", "dispute_opened")


def notification_xml(kind: str, subject_name: str, subject: dict[str, Any], at: int) -> bytes:
    """The ``<notification>`` document of one event; ``subject`` is a rendered transaction or dispute."""
    body = {"timestamp": datetime.fromtimestamp(at, UTC), "kind": kind, "subject": {subject_name: subject}}
    return xml_codec.encode("notification", body)


def payload(document: bytes) -> str:
    return base64.encodebytes(document).decode("ascii")


def signature(public_key: str, private_key: str, bt_payload: str) -> str:
    key = hashlib.sha1(private_key.encode()).digest()
    digest = hmac.new(key, bt_payload.encode("ascii"), hashlib.sha1).hexdigest()
    return f"{public_key}|{digest}"
