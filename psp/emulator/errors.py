"""Stripe's error envelope as one exception type, so handlers raise and exactly one place renders."""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error answered in Stripe's ``{"error": {...}}`` shape.

    ``saved`` says whether an idempotent request that failed this way keeps its answer for replay: Stripe
    saves results once an endpoint started executing, but not parameter validation failures.
    """

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        param: str | None = None,
        charge: str | None = None,
        payment_intent: dict[str, Any] | None = None,
        payment_method: dict[str, Any] | None = None,
        saved: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.decline_code = decline_code
        self.param = param
        self.charge = charge
        self.payment_intent = payment_intent
        self.payment_method = payment_method
        self.saved = saved

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        for name in ("code", "decline_code", "param", "charge", "payment_intent", "payment_method"):
            value = getattr(self, name)
            if value is not None:
                error[name] = value
        return {"error": error}


def invalid(message: str, *, param: str | None = None, code: str = "parameter_invalid") -> StripeError:
    """A parameter the endpoint refuses before doing anything."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, saved=False)


def missing(param: str) -> StripeError:
    return StripeError(
        400,
        "invalid_request_error",
        f"Missing required param: {param}.",
        code="parameter_missing",
        param=param,
        saved=False,
    )


def no_such(kind: str, obj_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404,
        "invalid_request_error",
        f"No such {kind}: '{obj_id}'",
        code="resource_missing",
        param=param,
        saved=False,
    )


def unexpected_state(message: str, *, code: str = "payment_intent_unexpected_state") -> StripeError:
    """The object exists but is in a state that forbids the operation; saved for replay like Stripe."""
    return StripeError(400, "invalid_request_error", message, code=code)
