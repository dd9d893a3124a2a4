"""A charge as a client sends it and sees it: the one request the probes and the bursts all make."""

from __future__ import annotations

import contextlib
import time

import httpx

from ops.chaos.measure import Request


def send_charge(
    client: httpx.Client, key: str, amount: int, source: str, answers: tuple[int, ...] = (200, 202, 402)
) -> Request:
    """One charge with ``key``, as its client saw it: one of ``answers`` (done, pending or declined), or
    failed."""
    body = {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa"}
    sent = time.time()
    status, made = 0, None
    with contextlib.suppress(httpx.HTTPError):
        answer = client.post("/v1/charges", json=body, headers={"Idempotency-Key": key})
        status = answer.status_code
        if status == 200:
            made = answer.json().get("id")
    ok = status in answers
    return Request("POST /v1/charges", key, sent, time.time(), status, ok, object_id=made, source=source)
