"""API objects and the error envelope, rendered to the exact bytes that are sent and stored for replay."""

from __future__ import annotations

import json
from typing import Any

from payray import refund as refund_machine
from payray.charge import ChargeState, public_status
from payray.errors import PayrayError
from payray.intent import IntentState
from serve_app.stores.charges import Charge
from serve_app.stores.intents import Intent
from serve_app.stores.refunds import Refund


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def charge_object(p: Charge) -> dict[str, Any]:
    """A charge as Stripe shows one: an authorization (``capture=false``) has succeeded uncaptured; what of
    it was released rather than captured counts as refunded, as Stripe counts it."""
    status = public_status(p.state)
    captured = p.state == ChargeState.SUCCEEDED
    released = 0
    if captured:
        released = p.amount.amount - p.captured_amount.amount
    elif p.state == ChargeState.CANCELED:
        released = p.amount.amount
    refunded = p.amount_refunded + released
    return {
        "id": p.id,
        "object": "charge",
        "amount": p.amount.amount,
        "amount_captured": p.captured_amount.amount if captured else 0,
        "amount_refunded": refunded,
        "captured": captured,
        "created": int(p.created_at.timestamp()),
        "currency": p.currency,
        "customer": p.customer,
        "description": p.description,
        "failure_code": p.failure_code,
        "failure_message": p.failure_message,
        "livemode": False,
        "merchant": p.merchant_id,
        "metadata": p.metadata,
        "paid": status == "succeeded",
        "payment_intent": p.payment_intent_id,
        "payment_method": p.payment_method,
        "psp_reference": p.psp_reference,
        "refunded": refunded == p.amount.amount,
        "status": status,
    }


def refund_object(r: Refund) -> dict[str, Any]:
    return {
        "id": r.id,
        "object": "refund",
        "amount": r.amount.amount,
        "charge": r.payment_id,
        "created": int(r.created_at.timestamp()),
        "currency": r.currency,
        "failure_reason": r.failure_reason,
        "metadata": r.metadata,
        "psp_reference": r.psp_reference,
        "reason": r.reason,
        "status": refund_machine.public_status(r.state),
    }


def list_object(url: str, data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "url": url, "data": data, "has_more": has_more}


def doc_url(code: str) -> str:
    """Stripe's page for an error code, as its errors link it."""
    return f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"


def error_object(exc: PayrayError, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"type": exc.type, "message": exc.message}
    if exc.code:
        error["code"] = exc.code
        error["doc_url"] = doc_url(exc.code)
    if exc.param:
        error["param"] = exc.param
    error.update({k: v for k, v in extra.items() if v is not None})
    return {"error": error}


#: Card failures Stripe reports under their own error code; every other decline is ``card_declined``.
_OWN_ERROR_CODES = frozenset({"expired_card", "incorrect_cvc", "incorrect_number", "processing_error"})


def decline_object(p: Charge) -> dict[str, Any]:
    """A 402 as Stripe sends it: the failed charge's id rides in ``error.charge``."""
    reason = p.failure_code or "generic_decline"
    code = reason if reason in _OWN_ERROR_CODES else "card_declined"
    return {
        "error": {
            "type": "card_error",
            "code": code,
            "decline_code": reason,
            "doc_url": doc_url(code),
            "message": p.failure_message or "Your card was declined.",
            "charge": p.id,
        }
    }


def payment_error(p: Charge) -> dict[str, Any]:
    """An intent's ``last_payment_error`` after its charge failed: the decline, and the payment method the
    intent let go of (it asks for another)."""
    return {
        **decline_object(p)["error"],
        "payment_method": {"id": p.payment_method, "object": "payment_method", "type": "card"},
    }


def intent_object(i: Intent) -> dict[str, Any]:
    """A PaymentIntent as Stripe shows one; ``latest_charge`` is the charge its last confirmation made."""
    return {
        "id": i.id,
        "object": "payment_intent",
        "amount": i.amount.amount,
        "amount_capturable": i.amount.amount if i.state == IntentState.REQUIRES_CAPTURE else 0,
        "amount_received": i.amount_received,
        "canceled_at": int(i.canceled_at.timestamp()) if i.canceled_at is not None else None,
        "cancellation_reason": i.cancellation_reason,
        "capture_method": i.capture_method,
        "confirmation_method": "automatic",
        "created": int(i.created_at.timestamp()),
        "currency": i.currency,
        "customer": i.customer,
        "description": i.description,
        "last_payment_error": i.last_payment_error,
        "latest_charge": i.charge_id,
        "livemode": False,
        "metadata": i.metadata,
        "payment_method": i.payment_method,
        "payment_method_types": ["card"],
        "status": i.state,
    }


def intent_decline_object(i: Intent) -> dict[str, Any]:
    """A confirm's 402, as Stripe sends it: the payment error, with the intent it left behind."""
    return {"error": {**(i.last_payment_error or {}), "payment_intent": intent_object(i)}}
