"""Braintree's validation errors: the codes and names of ``braintree.ErrorCodes``, rendered in one place.

A refused operation is HTTP 422 with an ``api-error-response`` body; the SDK turns that into an
``ErrorResult`` (``is_success`` False) instead of raising, and a processor decline rides the same envelope
with its transaction attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Code(Enum):
    """``(code, message)``: the code is ``braintree.ErrorCodes.<Object>.<Name>`` of the real SDK."""

    AmountCannotBeNegative = ("81501", "Amount cannot be negative.")
    AmountIsRequired = ("81502", "Amount is required.")
    AmountIsInvalid = ("81503", "Amount is an invalid format.")
    AmountIsTooLarge = ("81528", "Amount is too large.")
    AmountMustBeGreaterThanZero = ("81531", "Amount must be greater than zero.")
    CannotBeVoided = (
        "91504",
        "Transaction can only be voided if status is authorized, submitted_for_settlement, or - for PayPal - "
        "settlement_pending.",
    )
    CannotRefundCredit = ("91505", "Cannot refund a credit.")
    CannotRefundUnlessSettled = ("91506", "Cannot refund transaction unless it is settled.")
    CannotSubmitForSettlement = ("91507", "Cannot submit for settlement unless status is authorized.")
    CreditCardIsRequired = ("91508", "Credit card is required.")
    HasAlreadyBeenRefunded = ("91512", "Transaction has already been completely refunded.")
    OrderIdIsTooLong = ("91501", "Order ID is too long.")
    RefundAmountIsTooLarge = ("91521", "Refund amount is too large.")
    SettlementAmountIsTooLarge = ("91522", "Settlement amount is too large.")
    PaymentMethodNonceUnknown = ("91565", "Unknown payment_method_nonce.")
    CannotRefundSettlingTransaction = ("91574", "Cannot refund a transaction with a status of settling.")
    CannotSimulateTransactionSettlement = (
        "91575",
        "Cannot simulate transaction settlement unless status is submitted_for_settlement or settling.",
    )
    TypeIsInvalid = ("91523", "Transaction type is invalid.")
    TypeIsRequired = ("91524", "Transaction type is required.")
    ApiRequestKeyTooLong = ("915230", "API request key is too long.")
    ApiRequestKeyCanBeReusedOnlyWithTheSameRequest = (
        "915232",
        "API request key can be reused only with the same request.",
    )
    ApiRequestKeyIsInFlight = ("915233", "A request with this API request key is in flight.")
    NumberIsInvalid = ("81715", "Credit card number is invalid.")
    SettlementDateIsRequired = ("82301", "Settlement Date is required")
    SettlementDateIsInvalid = ("82302", "Settlement Date is invalid")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class FieldError:
    """One error on ``attribute`` of the object at ``path`` (``("transaction",)``, ``("transaction",
    "credit_card")``); ``base`` means the object as a whole."""

    code: Code
    attribute: str = "base"
    path: tuple[str, ...] = ("transaction",)


@dataclass
class BraintreeError(Exception):
    """A 422 ``api-error-response``; ``transaction`` is set for declines (the SDK exposes it)."""

    errors: list[FieldError]
    message: str = ""
    transaction: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    #: whether an ``api_request_key`` keeps this answer for replay (declines: yes; validation: no)
    saved: bool = False

    def __post_init__(self) -> None:
        if not self.message:
            self.message = "\n".join(e.code.message for e in self.errors)
        super().__init__(self.message)


def refused(code: Code, attribute: str = "base", path: tuple[str, ...] = ("transaction",)) -> BraintreeError:
    return BraintreeError([FieldError(code, attribute, path)])


def error_response(error: BraintreeError) -> dict[str, Any]:
    """The ``api-error-response`` value: errors nested per object, params, message and transaction."""
    tree: dict[str, Any] = {"errors": []}
    for item in error.errors:
        node = tree
        for name in item.path:
            node = node.setdefault(name, {"errors": []})
        node["errors"].append(
            {"attribute": item.attribute, "code": item.code.code, "message": item.code.message}
        )
    body: dict[str, Any] = {"errors": tree, "message": error.message}
    if error.params:
        body["params"] = error.params
    if error.transaction is not None:
        body["transaction"] = error.transaction
    return body
