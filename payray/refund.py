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

from dataclasses import dataclass
from enum import StrEnum

from payray.errors import IllegalTransition


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


S, E, C = RefundState, RefundEvent, RefundCommand

TRANSITIONS: dict[tuple[RefundState, RefundEvent], tuple[RefundState, tuple[RefundCommand, ...]]] = {
    (S.PENDING, E.FUNDS_HELD): (S.FUNDS_HELD, (C.REFUND_AT_PSP,)),
    (S.FUNDS_HELD, E.PSP_REFUNDED): (S.SUCCEEDED, (C.RESPOND,)),
    (S.FUNDS_HELD, E.PSP_UNKNOWN): (S.PSP_UNKNOWN, (C.RESPOND,)),
    (S.FUNDS_HELD, E.PSP_REFUSED): (S.REVERSING, (C.POST_REVERSAL,)),
    (S.PSP_UNKNOWN, E.PSP_RETRY): (S.FUNDS_HELD, (C.REFUND_AT_PSP,)),
    (S.PSP_UNKNOWN, E.PSP_REFUNDED): (S.SUCCEEDED, (C.RESPOND,)),
    (S.PSP_UNKNOWN, E.PSP_REFUSED): (S.REVERSING, (C.POST_REVERSAL,)),
    (S.REVERSING, E.REVERSAL_POSTED): (S.FAILED, (C.RESPOND,)),
    (S.BOOKING, E.REFUND_BOOKED): (S.SUCCEEDED, (C.RESPOND,)),
}

TERMINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED})

#: Re-running the command that led into a state is how an interrupted refund resumes.
RESUME: dict[RefundState, RefundCommand] = {
    S.PENDING: C.DEBIT_WALLET,
    S.FUNDS_HELD: C.REFUND_AT_PSP,
    S.REVERSING: C.POST_REVERSAL,
    S.BOOKING: C.BOOK_REFUND,
}


@dataclass(frozen=True, slots=True)
class RefundTransition:
    source: RefundState
    event: RefundEvent
    target: RefundState
    commands: tuple[RefundCommand, ...]


def step(state: RefundState | str, event: RefundEvent | str) -> RefundTransition:
    """The transition for ``event`` in ``state``; raises ``IllegalTransition`` if there is none."""
    source, ev = RefundState(state), RefundEvent(event)
    try:
        target, commands = TRANSITIONS[(source, ev)]
    except KeyError:
        raise IllegalTransition(source.value, ev.value) from None
    return RefundTransition(source, ev, target, commands)


def allowed_events(state: RefundState | str) -> list[RefundEvent]:
    source = RefundState(state)
    return [event for (s, event) in TRANSITIONS if s == source]


def is_terminal(state: RefundState | str) -> bool:
    return RefundState(state) in TERMINAL_STATES


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


def public_status(state: RefundState | str) -> str:
    """The API's ``status``: ``succeeded``, ``failed`` or ``pending``."""
    s = RefundState(state)
    if s is S.SUCCEEDED:
        return "succeeded"
    if s is S.FAILED:
        return "failed"
    return "pending"
