"""Braintree's transaction statuses as data: which event moves which status where, and which error code
refuses an event that has no transition. Pure; the gateway persists whatever this returns."""

from __future__ import annotations

from typing import Literal

from psp.emulator.braintree.errors import Code, refused

Status = Literal[
    "authorized",
    "submitted_for_settlement",
    "settling",
    "settlement_pending",
    "settled",
    "voided",
    "processor_declined",
    "gateway_rejected",
    "failed",
    "settlement_declined",
]
Event = Literal[
    "submit_for_settlement", "void", "begin_settling", "hold_settlement", "settle", "decline_settlement"
]

TRANSITIONS: dict[tuple[str, str], Status] = {
    ("authorized", "submit_for_settlement"): "submitted_for_settlement",
    ("authorized", "void"): "voided",
    ("submitted_for_settlement", "void"): "voided",
    ("settlement_pending", "void"): "voided",
    ("submitted_for_settlement", "begin_settling"): "settling",
    ("submitted_for_settlement", "hold_settlement"): "settlement_pending",
    ("settling", "hold_settlement"): "settlement_pending",
    ("submitted_for_settlement", "settle"): "settled",
    ("settling", "settle"): "settled",
    ("settlement_pending", "settle"): "settled",
    ("submitted_for_settlement", "decline_settlement"): "settlement_declined",
    ("settling", "decline_settlement"): "settlement_declined",
    ("settlement_pending", "decline_settlement"): "settlement_declined",
}
REFUSALS: dict[str, Code] = {
    "submit_for_settlement": Code.CannotSubmitForSettlement,
    "void": Code.CannotBeVoided,
    "begin_settling": Code.CannotSimulateTransactionSettlement,
    "hold_settlement": Code.CannotSimulateTransactionSettlement,
    "settle": Code.CannotSimulateTransactionSettlement,
    "decline_settlement": Code.CannotSimulateTransactionSettlement,
}
#: Statuses waiting for a settlement batch: the clock settles them at the batch's cut-off.
AWAITING_BATCH = frozenset({"submitted_for_settlement", "settling", "settlement_pending"})
REFUNDABLE = frozenset({"settled"})


def next_status(status: str, event: str) -> Status:
    """The status after ``event``, or the ``BraintreeError`` the gateway answers for it."""
    found = TRANSITIONS.get((status, event))
    if found is None:
        raise refused(REFUSALS[event])
    return found


def refund_refusal(txn_type: str, status: str, remaining: int, amount: int) -> Code | None:
    """Why a refund of ``amount`` is refused (None: allowed). An unsettled sale is voided, not refunded."""
    if txn_type == "credit":
        return Code.CannotRefundCredit
    if status == "settling":
        return Code.CannotRefundSettlingTransaction
    if status not in REFUNDABLE:
        return Code.CannotRefundUnlessSettled
    if remaining <= 0:
        return Code.HasAlreadyBeenRefunded
    if amount > remaining:
        return Code.RefundAmountIsTooLarge
    return None
