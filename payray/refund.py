"""The refund state machine, sans IO: ``(state, event) -> (state, commands)``.

Money leaves the merchant's balance before it leaves through the PSP: the wallet debits the refund first (it
refuses one the balance does not cover, as it refuses a payout), and only then is the PSP asked to refund,
with a key derived from the refund id so a retry cannot refund twice. A PSP that refuses sends the debit back
with a reversing posting. The amount is reserved on the charge when the refund is created and released only
if the refund fails, so concurrent refunds of one charge never add up to more than was charged. A refund the
balance does not cover is discarded while still ``pending``, before anything moved: it leaves no row behind.

    pending --funds_held--> funds_held              [refund_at_psp]
    funds_held --psp_refunded--> succeeded          [respond]            (terminal)
    funds_held --psp_unknown--> psp_unknown         [respond]            (answers pending)
    funds_held --psp_refused--> reversing           [post_reversal]
    psp_unknown --psp_retry--> funds_held           [refund_at_psp]      (same PSP idempotency key)
    psp_unknown --psp_refunded--> succeeded         [respond]
    psp_unknown --psp_refused--> reversing          [post_reversal]
    reversing --reversal_posted--> failed           [respond]            (terminal; debit given back)
    booking --refund_booked--> succeeded            [respond]            (terminal)

``booking`` is where a refund made at the PSP without us (seen first in a ``charge.refunded`` webhook) starts:
the money already left, so the wallet books it whatever the balance (it may go below zero), with no PSP call.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from payray import machine


class RefundState(StrEnum):
    PENDING = "pending"
    FUNDS_HELD = "funds_held"
    PSP_UNKNOWN = "psp_unknown"
    REVERSING = "reversing"
    BOOKING = "booking"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RefundEvent(StrEnum):
    FUNDS_HELD = "funds_held"
    PSP_REFUNDED = "psp_refunded"
    PSP_UNKNOWN = "psp_unknown"
    PSP_REFUSED = "psp_refused"
    PSP_RETRY = "psp_retry"
    REVERSAL_POSTED = "reversal_posted"
    REFUND_BOOKED = "refund_booked"


class RefundCommand(StrEnum):
    DEBIT_WALLET = "debit_wallet"
    REFUND_AT_PSP = "refund_at_psp"
    POST_REVERSAL = "post_reversal"
    BOOK_REFUND = "book_refund"
    RESPOND = "respond"


TERMINAL_STATES = frozenset({RefundState.SUCCEEDED, RefundState.FAILED})

S, E, C = RefundState, RefundEvent, RefundCommand

#: The machine as data: (state, event) -> (next state, the one command to run once it is persisted).
NEXT: dict[tuple[RefundState, RefundEvent], tuple[RefundState, RefundCommand]] = {
    (S.PENDING, E.FUNDS_HELD): (S.FUNDS_HELD, C.REFUND_AT_PSP),
    (S.FUNDS_HELD, E.PSP_REFUNDED): (S.SUCCEEDED, C.RESPOND),
    (S.FUNDS_HELD, E.PSP_UNKNOWN): (S.PSP_UNKNOWN, C.RESPOND),
    (S.FUNDS_HELD, E.PSP_REFUSED): (S.REVERSING, C.POST_REVERSAL),
    (S.PSP_UNKNOWN, E.PSP_RETRY): (S.FUNDS_HELD, C.REFUND_AT_PSP),
    (S.PSP_UNKNOWN, E.PSP_REFUNDED): (S.SUCCEEDED, C.RESPOND),
    (S.PSP_UNKNOWN, E.PSP_REFUSED): (S.REVERSING, C.POST_REVERSAL),
    (S.REVERSING, E.REVERSAL_POSTED): (S.FAILED, C.RESPOND),
    (S.BOOKING, E.REFUND_BOOKED): (S.SUCCEEDED, C.RESPOND),
}

TRANSITIONS = {key: (target, (command,)) for key, (target, command) in NEXT.items()}

#: Re-running the command that led into a state is how an interrupted refund resumes.
RESUME: dict[RefundState, tuple[RefundCommand, ...]] = {
    S.PENDING: (C.DEBIT_WALLET,),
    S.FUNDS_HELD: (C.REFUND_AT_PSP,),
    S.REVERSING: (C.POST_REVERSAL,),
    S.BOOKING: (C.BOOK_REFUND,),
}

#: A refund whose outcome at the PSP is unknown resumes by asking again, under the same idempotency key.
RESUME_EVENTS: dict[RefundState, RefundEvent] = {S.PSP_UNKNOWN: E.PSP_RETRY}

MACHINE = machine.Machine(
    RefundState,
    RefundEvent,
    TRANSITIONS,
    TERMINAL_STATES,
    resume_events=RESUME_EVENTS,
    resume_commands=RESUME,
    answers=frozenset({C.RESPOND}),
    statuses={S.SUCCEEDED: "succeeded", S.FAILED: "failed"},
)
RefundTransition: TypeAlias = machine.Transition[RefundState, RefundEvent, RefundCommand]

step = MACHINE.step
allowed_events = MACHINE.allowed_events
is_terminal = MACHINE.is_terminal
resume = MACHINE.resume
public_status = MACHINE.public_status


#: What the PSP's answer to ``refund_at_psp`` means to the machine (its ``charge.refunded`` webhook is
#: ``refunded``).
PSP_EVENTS: dict[str, RefundEvent] = {
    "refunded": E.PSP_REFUNDED,
    "failed": E.PSP_REFUSED,
    "unknown": E.PSP_UNKNOWN,
}


def holds_funds(state: RefundState | str) -> bool:
    """Whether the merchant's balance is debited in ``state`` (the ledger holds the refund posting and no
    reversal of it)."""
    return RefundState(state) in (S.FUNDS_HELD, S.PSP_UNKNOWN, S.REVERSING, S.SUCCEEDED)


def refunded_at_psp(state: RefundState | str) -> bool:
    """Whether the PSP has (or may have) refunded in ``state``: from here on the refund is never reversed."""
    return RefundState(state) in (S.PSP_UNKNOWN, S.BOOKING, S.SUCCEEDED)


def psp_refund_key(refund_id: str) -> str:
    """The PSP-side idempotency key for a refund: derived, so every retry reuses it."""
    return f"payray-refund-{refund_id}"
