"""Which card a Braintree sale pays with, and what the processor answers: the emulator's test cards.

Braintree's fake nonces (``fake-valid-nonce``, ``fake-processor-declined-visa-nonce``…), its sandbox card
numbers and payray's Stripe-style test ids (``pm_card_visa``, ``pm_card_chargeDeclined``…) all resolve to the
profiles of ``psp.emulator.cards``, so one test payment method behaves alike at both PSPs. Stripe's decline
codes map to Braintree's processor responses; the sandbox's amount rule (2000.00-2999.99 declines with that
code, 3000.00-3000.99 fails) holds too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psp.emulator.braintree.errors import BraintreeError, Code, FieldError
from psp.emulator.cards import (
    DECLINES,
    GENERIC_DECLINE,
    TOKENS,
    CardProfile,
    profile_for_number,
    profile_for_token,
)


@dataclass(frozen=True)
class ProcessorResponse:
    code: str
    text: str
    type: str  # approved | soft_declined | hard_declined


@dataclass(frozen=True)
class Instrument:
    """A resolved payment method; ``rejection`` is a gateway rejection reason (the sale never reaches the
    processor)."""

    card: CardProfile
    bin: str
    rejection: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: str  # authorized | processor_declined | failed | gateway_rejected
    response: ProcessorResponse
    rejection: str | None = None


APPROVED = ProcessorResponse("1000", "Approved", "approved")
PROCESSOR_UNAVAILABLE = ProcessorResponse(
    "3000", "Processor Network Unavailable - Try Again", "soft_declined"
)
#: Stripe's decline codes as Braintree processor responses; ``processing_error`` is a processor failure.
DECLINE_RESPONSES: dict[str, ProcessorResponse] = {
    "generic_decline": ProcessorResponse("2000", "Do Not Honor", "soft_declined"),
    "insufficient_funds": ProcessorResponse("2001", "Insufficient Funds", "soft_declined"),
    "expired_card": ProcessorResponse("2004", "Expired Card", "hard_declined"),
    "incorrect_cvc": ProcessorResponse("2010", "Card Issuer Declined CVV", "soft_declined"),
    "lost_card": ProcessorResponse("2012", "Processor Declined - Possible Lost Card", "hard_declined"),
    "stolen_card": ProcessorResponse("2013", "Processor Declined - Possible Stolen Card", "hard_declined"),
    "processing_error": PROCESSOR_UNAVAILABLE,
}
CARD_TYPES = {
    "visa": "Visa",
    "mastercard": "MasterCard",
    "amex": "American Express",
    "discover": "Discover",
    "jcb": "JCB",
}
BINS = {"visa": "424242", "mastercard": "555555", "amex": "378282", "discover": "601111", "jcb": "356600"}

_DECLINED_VISA = TOKENS["chargeDeclined"]
NONCES: dict[str, Instrument] = {
    "fake-valid-nonce": Instrument(TOKENS["visa"], "424242"),
    "fake-valid-visa-nonce": Instrument(TOKENS["visa"], "424242"),
    "fake-valid-debit-nonce": Instrument(TOKENS["visa_debit"], "400005"),
    "fake-valid-mastercard-nonce": Instrument(TOKENS["mastercard"], "555555"),
    "fake-valid-amex-nonce": Instrument(TOKENS["amex"], "378282"),
    "fake-valid-discover-nonce": Instrument(CardProfile("discover", "1117"), "601111"),
    "fake-processor-declined-visa-nonce": Instrument(_DECLINED_VISA, "400000"),
    "fake-processor-declined-mastercard-nonce": Instrument(
        CardProfile("mastercard", "0004", decline=GENERIC_DECLINE), "510510"
    ),
    "fake-processor-declined-amex-nonce": Instrument(
        CardProfile("amex", "0007", decline=GENERIC_DECLINE), "378734"
    ),
    "fake-processor-declined-discover-nonce": Instrument(
        CardProfile("discover", "0002", decline=GENERIC_DECLINE), "601100"
    ),
    "fake-processor-failure-jcb-nonce": Instrument(
        CardProfile("jcb", "0000", decline=DECLINES["processing_error"]), "356600"
    ),
    "fake-gateway-rejected-fraud-nonce": Instrument(TOKENS["visa"], "424242", rejection="fraud"),
}
#: Braintree's sandbox numbers that Stripe's table does not know.
NUMBERS: dict[str, CardProfile] = {
    "4111111111111111": CardProfile("visa", "1111"),
    "4000111111111115": CardProfile("visa", "1115", decline=GENERIC_DECLINE),
    "5105105105105100": CardProfile("mastercard", "5100"),
    "6011111111111117": CardProfile("discover", "1117"),
}
SANDBOX_DECLINE_RANGE = (200_000, 300_000)
SANDBOX_FAILURE_RANGE = (300_000, 300_100)


def resolve(params: dict[str, Any]) -> Instrument:
    """The instrument of a sale's ``payment_method_nonce``, ``payment_method_token`` or ``credit_card``."""
    nonce = params.get("payment_method_nonce") or params.get("payment_method_token")
    if isinstance(nonce, str) and nonce:
        if nonce in NONCES:
            return NONCES[nonce]
        profile = profile_for_token(nonce)
        if profile is None:
            raise BraintreeError([FieldError(Code.PaymentMethodNonceUnknown, "payment_method_nonce")])
        return Instrument(profile, BINS.get(profile.brand, "400000"))
    card = params.get("credit_card")
    number = card.get("number") if isinstance(card, dict) else None
    if not isinstance(number, str) or not number:
        raise BraintreeError([FieldError(Code.CreditCardIsRequired)])
    number = number.replace(" ", "")
    profile = NUMBERS.get(number) or profile_for_number(number)
    if profile is None:
        path = ("transaction", "credit_card")
        raise BraintreeError([FieldError(Code.NumberIsInvalid, "number", path)])
    return Instrument(profile, number[:6])


def authorize(instrument: Instrument, amount: int, forced_decline: str | None = None) -> Outcome:
    """What the gateway and the processor answer for ``amount`` (minor units) on ``instrument``."""
    if instrument.rejection is not None:
        return Outcome("gateway_rejected", ProcessorResponse("", "Unknown", ""), instrument.rejection)
    decline = forced_decline or (instrument.card.decline.decline_code if instrument.card.decline else None)
    if decline is None and SANDBOX_DECLINE_RANGE[0] <= amount < SANDBOX_DECLINE_RANGE[1]:
        return Outcome("processor_declined", _sandbox_response(str(amount // 100)))
    if decline is None and SANDBOX_FAILURE_RANGE[0] <= amount < SANDBOX_FAILURE_RANGE[1]:
        return Outcome("failed", PROCESSOR_UNAVAILABLE)
    if decline is None:
        return Outcome("authorized", APPROVED)
    response = DECLINE_RESPONSES.get(decline, DECLINE_RESPONSES["generic_decline"])
    return Outcome("failed" if response is PROCESSOR_UNAVAILABLE else "processor_declined", response)


def _sandbox_response(code: str) -> ProcessorResponse:
    for response in DECLINE_RESPONSES.values():
        if response.code == code:
            return response
    return ProcessorResponse(code, "Processor Declined", "soft_declined")


def card_details(instrument: Instrument) -> dict[str, Any]:
    """The ``credit-card`` node of a transaction (stored as is, rendered as is)."""
    card = instrument.card
    return {
        "bin": instrument.bin,
        "last_4": card.last4,
        "card_type": CARD_TYPES.get(card.brand, "Unknown"),
        "expiration_month": f"{card.exp_month:02d}",
        "expiration_year": str(card.exp_year),
        "customer_location": "US" if card.country == "US" else "International",
        "debit": "Yes" if card.funding == "debit" else "No",
        "token": None,
    }
