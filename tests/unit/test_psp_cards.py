"""Stripe's test cards map to the decline codes Stripe documents."""

from __future__ import annotations

import pytest

from psp.emulator.cards import luhn_ok, profile_for_number, profile_for_token


@pytest.mark.parametrize(
    ("token", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
        ("tok_chargeDeclined", "card_declined", "generic_decline"),
    ],
)
def test_decline_tokens(token: str, code: str, decline_code: str) -> None:
    profile = profile_for_token(token)
    assert profile is not None and profile.decline is not None
    assert (profile.decline.code, profile.decline.decline_code) == (code, decline_code)


@pytest.mark.parametrize(("token", "brand"), [("pm_card_visa", "visa"), ("pm_card_mastercard", "mastercard")])
def test_success_tokens(token: str, brand: str) -> None:
    profile = profile_for_token(token)
    assert profile is not None and profile.decline is None and profile.brand == brand


def test_unknown_tokens_resolve_to_nothing() -> None:
    assert profile_for_token("pm_card_nonsense") is None
    assert profile_for_token("pm_123") is None


@pytest.mark.parametrize(
    ("number", "decline_code"),
    [
        ("4242424242424242", None),
        ("4000000000000002", "generic_decline"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000009987", "lost_card"),
        ("4000000000000069", "expired_card"),
        ("4000000000000127", "incorrect_cvc"),
        ("4000000000000119", "processing_error"),
        ("4000000000000341", "generic_decline"),
    ],
)
def test_card_numbers(number: str, decline_code: str | None) -> None:
    profile = profile_for_number(number)
    assert profile is not None
    assert (profile.decline.decline_code if profile.decline else None) == decline_code
    assert profile.last4 == number[-4:]


def test_three_d_secure_card_requires_action() -> None:
    profile = profile_for_number("4000002500003155")
    assert profile is not None and profile.requires_action


def test_other_valid_numbers_succeed_and_invalid_ones_are_refused() -> None:
    profile = profile_for_number("5105105105105100")
    assert profile is not None and profile.brand == "mastercard" and profile.decline is None
    assert profile_for_number("4242424242424241") is None
    assert not luhn_ok("abcd")
