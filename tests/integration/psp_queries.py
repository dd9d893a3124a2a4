"""Ask the PSP emulator, over Stripe's own API, what it captured and refunded."""

from __future__ import annotations

from typing import Any

import httpx

from ops.stack import EMULATOR_API_KEY


def payment_intents(psp: httpx.Client, **metadata: str) -> list[dict[str, Any]]:
    query = " AND ".join(f"metadata['{k}']:'{v}'" for k, v in metadata.items())
    found: list[dict[str, Any]] = []
    page: str | None = None
    while True:
        params = {"query": query, "limit": "100", **({"page": page} if page else {})}
        response = psp.get(
            "/v1/payment_intents/search",
            params=params,
            headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        found.extend(body["data"])
        page = body.get("next_page")
        if not body.get("has_more") or not page:
            return found


def captures_for_merchant(psp: httpx.Client, merchant_id: str) -> list[dict[str, Any]]:
    return [pi for pi in payment_intents(psp, payray_merchant_id=merchant_id) if pi["status"] == "succeeded"]


def refunds_of(psp: httpx.Client, payment_intent: str) -> list[dict[str, Any]]:
    """The PSP's refunds of one PaymentIntent, newest first."""
    response = psp.get(
        "/v1/refunds",
        params={"payment_intent": payment_intent, "limit": "100"},
        headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]
