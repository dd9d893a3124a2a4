"""Stripe's test cards: which token or number succeeds, and which decline code each one produces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decline:
    """What the issuer says; ``code`` is the error code, ``decline_code`` the issuer's reason."""

    code: str
    decline_code: str
    message: str


@dataclass(frozen=True)
class CardProfile:
    brand: str
    last4: str
    funding: str = "credit"
    country: str = "US"
    exp_month: int = 12
    exp_year: int = 2034
    decline: Decline | None = None
    requires_action: bool = False


GENERIC_DECLINE = Decline("card_declined", "generic_decline", "Your card was declined.")
DECLINES: dict[str, Decline] = {
    "generic_decline": GENERIC_DECLINE,
    "insufficient_funds": Decline("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "lost_card": Decline("card_declined", "lost_card", "Your card was declined."),
    "stolen_card": Decline("card_declined", "stolen_card", "Your card was declined."),
    "expired_card": Decline("expired_card", "expired_card", "Your card has expired."),
    "incorrect_cvc": Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": Decline(
        "processing_error", "processing_error", "An error occurred while processing your card. Try again."
    ),
}

_VISA = CardProfile("visa", "4242")

TOKENS: dict[str, CardProfile] = {
    "visa": _VISA,
    "visa_debit": CardProfile("visa", "5556", funding="debit"),
    "mastercard": CardProfile("mastercard", "4444"),
    "amex": CardProfile("amex", "8431"),
    "chargeDeclined": CardProfile("visa", "0002", decline=GENERIC_DECLINE),
    "chargeDeclinedInsufficientFunds": CardProfile("visa", "9995", decline=DECLINES["insufficient_funds"]),
    "chargeDeclinedLostCard": CardProfile("visa", "9987", decline=DECLINES["lost_card"]),
    "chargeDeclinedStolenCard": CardProfile("visa", "9979", decline=DECLINES["stolen_card"]),
    "chargeDeclinedExpiredCard": CardProfile("visa", "0069", decline=DECLINES["expired_card"]),
    "chargeDeclinedIncorrectCvc": CardProfile("visa", "0127", decline=DECLINES["incorrect_cvc"]),
    "chargeDeclinedProcessingError": CardProfile("visa", "0119", decline=DECLINES["processing_error"]),
    "chargeCustomerFail": CardProfile("visa", "0341", decline=GENERIC_DECLINE),
    "authenticationRequired": CardProfile("visa", "3184", requires_action=True),
    "authenticationRequiredOnSetup": CardProfile("visa", "3155", requires_action=True),
}

NUMBERS: dict[str, CardProfile] = {
    "4242424242424242": _VISA,
    "4000056655665556": TOKENS["visa_debit"],
    "5555555555554444": TOKENS["mastercard"],
    "378282246310005": CardProfile("amex", "0005"),
    "4000000000000002": TOKENS["chargeDeclined"],
    "4000000000009995": TOKENS["chargeDeclinedInsufficientFunds"],
    "4000000000009987": TOKENS["chargeDeclinedLostCard"],
    "4000000000009979": TOKENS["chargeDeclinedStolenCard"],
    "4000000000000069": TOKENS["chargeDeclinedExpiredCard"],
    "4000000000000127": TOKENS["chargeDeclinedIncorrectCvc"],
    "4000000000000119": TOKENS["chargeDeclinedProcessingError"],
    "4000000000000341": TOKENS["chargeCustomerFail"],
    "4000002760003184": TOKENS["authenticationRequired"],
    "4000002500003155": TOKENS["authenticationRequiredOnSetup"],
}


def luhn_ok(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _brand(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"} or number[:1] == "2":
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "unknown"


def profile_for_number(number: str) -> CardProfile | None:
    """The profile of a raw card number; None when the number fails the Luhn check."""
    number = number.replace(" ", "")
    if number in NUMBERS:
        return NUMBERS[number]
    if not luhn_ok(number):
        return None
    return CardProfile(_brand(number), number[-4:])


def profile_for_token(token: str) -> CardProfile | None:
    """``pm_card_visa`` / ``tok_visa`` style test tokens; None for anything else."""
    for prefix in ("pm_card_", "tok_"):
        if token.startswith(prefix):
            return TOKENS.get(token[len(prefix) :])
    return None
