"""How the Stripe adapter turns PaymentIntents into the port's three outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from psp.stripe_adapter import _failure_code, result_from_intent


def _intent(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "pi_1",
        "status": status,
        "amount": 1000,
        "amount_received": 0,
        "currency": "usd",
        "latest_charge": "ch_1",
        "last_payment_error": None,
        **extra,
    }


def test_succeeded_is_captured() -> None:
    result = result_from_intent(_intent("succeeded", amount_received=1000))
    assert (result.status, result.psp_reference, result.charge_id, result.amount) == (
        "captured",
        "pi_1",
        "ch_1",
        1000,
    )


def test_failed_attempt_is_declined_with_the_issuer_reason() -> None:
    error = {"code": "card_declined", "decline_code": "insufficient_funds", "message": "no money"}
    result = result_from_intent(_intent("requires_payment_method", last_payment_error=error))
    assert (result.status, result.failure_code, result.failure_message) == (
        "declined",
        "insufficient_funds",
        "no money",
    )


def test_processing_is_unknown() -> None:
    assert result_from_intent(_intent("processing")).status == "unknown"


def test_requires_capture_is_an_authorization_of_the_capturable_amount() -> None:
    result = result_from_intent({**_intent("requires_capture"), "amount_capturable": 700})
    assert (result.status, result.amount) == ("authorized", 700)


def test_requires_action_is_declined_as_authentication_required() -> None:
    result = result_from_intent(_intent("requires_action"))
    assert (result.status, result.failure_code) == ("declined", "authentication_required")


def test_expanded_latest_charge_is_reduced_to_its_id() -> None:
    assert result_from_intent(_intent("succeeded", latest_charge={"id": "ch_9"})).charge_id == "ch_9"


@pytest.mark.parametrize(
    ("code", "decline_code", "expected"),
    [
        ("card_declined", "insufficient_funds", "insufficient_funds"),
        ("card_declined", "generic_decline", "card_declined"),
        ("expired_card", "expired_card", "expired_card"),
        ("card_declined", None, "card_declined"),
        (None, "lost_card", "lost_card"),
    ],
)
def test_failure_code_prefers_the_more_specific(
    code: str | None, decline_code: str | None, expected: str
) -> None:
    assert _failure_code(code, decline_code) == expected
