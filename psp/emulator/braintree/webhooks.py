"""Braintree webhook delivery: the Stripe personality's sender (queue, retries, backoff, drop, duplicate,
delay, reorder, record) with Braintree's wire form: a form POST of ``bt_signature`` and ``bt_payload``,
signed with the merchant's keys."""

from __future__ import annotations

from typing import Any

import aiohttp

from psp.emulator.braintree import notifications
from psp.emulator.braintree.credentials import Credentials
from psp.emulator.webhooks import WebhookConfig, WebhookSender
from psp.tls_trust import outbound_ssl_context


class BraintreeWebhookConfig(WebhookConfig):
    """Stripe's delivery knobs; no shared secret (the merchant's private key signs); ``enabled_events``
    names notification kinds."""

    secret: str | None = None  # type: ignore[assignment]


class BraintreeWebhookSender(WebhookSender):
    def __init__(self, credentials: Credentials, ca_bundle: str | None = None) -> None:
        super().__init__(ca_bundle)
        self.credentials = credentials

    async def _post(self, config: WebhookConfig, event: dict[str, Any]) -> int | None:
        merchant = self.credentials.get(event["merchant_id"])
        if merchant is None:
            return None
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=outbound_ssl_context(self.ca_bundle))
            self._session = aiohttp.ClientSession(connector=connector)
        form = {
            "bt_signature": notifications.signature(
                merchant.public_key, merchant.private_key, event["payload"]
            ),
            "bt_payload": event["payload"],
        }
        headers = {"User-Agent": "Braintree Webhooks"}
        try:
            timeout = aiohttp.ClientTimeout(total=config.timeout_s)
            post = self._session.post(config.url, data=form, headers=headers, timeout=timeout)
            async with post as answer:
                await answer.read()
                return answer.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
