"""The charge state machine, sans IO: ``(state, event) -> (state, commands)``.

The service's asyncio driver and the simulator's SimPy driver both execute the commands this machine
returns; the machine itself never touches a socket, a clock or a database. Beside its table it holds every
rule the drivers follow: how a persisted state resumes (``resume``), what recovery does with the PSP's lookup
(``after_lookup``), what the PSP's answers mean (``PSP_EVENTS``) and the steps that need no IO
(``AUTOMATIC``), so no driver keeps a copy of one.

Every transition is meant to be persisted before its commands run, so a crash anywhere resumes from the last
recorded state. One fold is allowed, and both drivers make it: a capture's ledger posting is written in one
database transaction with the transitions it completes (``booking``), so the PSP's capture, the posting and
the stored answer commit together or not at all; a crash before that commit leaves ``psp_pending``, which
recovery resolves by asking the PSP.

    created --submit--> psp_pending                     [call_psp]
    psp_pending --psp_captured--> captured              [post_ledger]
    psp_pending --psp_declined--> declined              [respond_declined]      (terminal)
    psp_pending --psp_unknown--> unknown                [respond_pending]
    psp_pending --psp_failed_over--> psp_pending        [call_psp]   (the next PSP, under its own key)
    unknown --psp_failed_over--> psp_pending            [call_psp]   (its PSP's search found nothing)
    unknown --psp_retry--> psp_pending                  [call_psp]   (same PSP idempotency key)
    unknown --psp_captured|psp_declined--> ...          (a webhook or lookup answered first)
    unknown --psp_not_found--> failed                   [respond_failed]        (terminal)
    captured --ledger_posted--> posted                  [respond_succeeded]
    captured --ledger_failed--> refund_pending          [refund_at_psp]         (compensation)
    posted --responded--> succeeded                                              (terminal)
    refund_pending --psp_refunded--> compensated        [post_compensation]
    refund_pending --psp_refund_unknown--> refund_pending [refund_at_psp]
    compensated --compensation_posted--> failed         [respond_failed]        (terminal)

A payment fails over to its merchant's next PSP only after a definite failure at the one it tried (the
request never left, the PSP refused it, or a decline another acquirer may approve: ``payray.routing``); the
attempt that ended is recorded with the transition, so each PSP sees a payment at most once, under a key of
its own. An unknown outcome never fails over until it is resolved at its own PSP: when recovery's search
there finds nothing, the PSP never took the payment, and it goes on to the next PSP rather than failing.

A charge created with ``capture=false`` (or confirmed by a PaymentIntent with ``capture_method=manual``) is
only authorized at the PSP. The authorization is a hold: booked in the ledger with the transitions it
completes (``hold_booking``), outside the merchant's available balance, so no payout can spend it.

    psp_pending|unknown --psp_authorized--> authorized  [post_hold]
    authorized --hold_posted--> requires_capture                                 (answers: uncaptured)
    requires_capture --capture--> capture_pending       [capture_at_psp]         (amount_to_capture)
    capture_pending --psp_captured--> captured          [post_ledger]            (booking: the captured
                                                                                  part, the hold released)
    requires_capture --cancel--> cancel_pending         [cancel_at_psp]          (by the merchant, or expiry)
    capture_pending|cancel_pending --psp_canceled--> released  [post_release]    (the PSP let it go)
    released --release_posted--> canceled                                         (terminal; hold released)
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from payray import machine
from payray.errors import IllegalTransition


class ChargeState(StrEnum):
    CREATED = "created"
    PSP_PENDING = "psp_pending"
    CAPTURED = "captured"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    POSTED = "posted"
    SUCCEEDED = "succeeded"
    REFUND_PENDING = "refund_pending"
    COMPENSATED = "compensated"
    FAILED = "failed"
    AUTHORIZED = "authorized"
    REQUIRES_CAPTURE = "requires_capture"
    CAPTURE_PENDING = "capture_pending"
    CANCEL_PENDING = "cancel_pending"
    RELEASED = "released"
    CANCELED = "canceled"


class ChargeEvent(StrEnum):
    SUBMIT = "submit"
    PSP_CAPTURED = "psp_captured"
    PSP_DECLINED = "psp_declined"
    PSP_UNKNOWN = "psp_unknown"
    PSP_RETRY = "psp_retry"
    PSP_NOT_FOUND = "psp_not_found"
    LEDGER_POSTED = "ledger_posted"
    LEDGER_FAILED = "ledger_failed"
    RESPONDED = "responded"
    PSP_REFUNDED = "psp_refunded"
    PSP_REFUND_UNKNOWN = "psp_refund_unknown"
    COMPENSATION_POSTED = "compensation_posted"
    PSP_AUTHORIZED = "psp_authorized"
    HOLD_POSTED = "hold_posted"
    CAPTURE = "capture"
    CANCEL = "cancel"
    PSP_CANCELED = "psp_canceled"
    RELEASE_POSTED = "release_posted"
    PSP_FAILED_OVER = "psp_failed_over"


class Command(StrEnum):
    CALL_PSP = "call_psp"
    POST_LEDGER = "post_ledger"
    RESPOND_SUCCEEDED = "respond_succeeded"
    RESPOND_DECLINED = "respond_declined"
    RESPOND_PENDING = "respond_pending"
    RESPOND_FAILED = "respond_failed"
    REFUND_AT_PSP = "refund_at_psp"
    POST_COMPENSATION = "post_compensation"
    POST_HOLD = "post_hold"
    CAPTURE_AT_PSP = "capture_at_psp"
    CANCEL_AT_PSP = "cancel_at_psp"
    POST_RELEASE = "post_release"


S, E, C = ChargeState, ChargeEvent, Command

#: The whole machine as data: (state, event) -> (next state, commands to run once it is persisted).
TRANSITIONS: dict[tuple[ChargeState, ChargeEvent], tuple[ChargeState, tuple[Command, ...]]] = {
    (S.CREATED, E.SUBMIT): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.PSP_PENDING, E.PSP_CAPTURED): (S.CAPTURED, (C.POST_LEDGER,)),
    (S.PSP_PENDING, E.PSP_DECLINED): (S.DECLINED, (C.RESPOND_DECLINED,)),
    (S.PSP_PENDING, E.PSP_UNKNOWN): (S.UNKNOWN, (C.RESPOND_PENDING,)),
    (S.PSP_PENDING, E.PSP_FAILED_OVER): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.UNKNOWN, E.PSP_RETRY): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.UNKNOWN, E.PSP_CAPTURED): (S.CAPTURED, (C.POST_LEDGER,)),
    (S.UNKNOWN, E.PSP_DECLINED): (S.DECLINED, (C.RESPOND_DECLINED,)),
    (S.UNKNOWN, E.PSP_NOT_FOUND): (S.FAILED, (C.RESPOND_FAILED,)),
    (S.UNKNOWN, E.PSP_FAILED_OVER): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.CAPTURED, E.LEDGER_POSTED): (S.POSTED, (C.RESPOND_SUCCEEDED,)),
    (S.CAPTURED, E.LEDGER_FAILED): (S.REFUND_PENDING, (C.REFUND_AT_PSP,)),
    (S.POSTED, E.RESPONDED): (S.SUCCEEDED, ()),
    (S.REFUND_PENDING, E.PSP_REFUNDED): (S.COMPENSATED, (C.POST_COMPENSATION,)),
    (S.REFUND_PENDING, E.PSP_REFUND_UNKNOWN): (S.REFUND_PENDING, (C.REFUND_AT_PSP,)),
    (S.COMPENSATED, E.COMPENSATION_POSTED): (S.FAILED, (C.RESPOND_FAILED,)),
    # authorized only: a hold, captured (in full or in part) or released later
    (S.PSP_PENDING, E.PSP_AUTHORIZED): (S.AUTHORIZED, (C.POST_HOLD,)),
    (S.UNKNOWN, E.PSP_AUTHORIZED): (S.AUTHORIZED, (C.POST_HOLD,)),
    (S.AUTHORIZED, E.HOLD_POSTED): (S.REQUIRES_CAPTURE, ()),
    (S.REQUIRES_CAPTURE, E.CAPTURE): (S.CAPTURE_PENDING, (C.CAPTURE_AT_PSP,)),
    (S.CAPTURE_PENDING, E.PSP_CAPTURED): (S.CAPTURED, (C.POST_LEDGER,)),
    (S.CAPTURE_PENDING, E.PSP_CANCELED): (S.RELEASED, (C.POST_RELEASE,)),
    (S.REQUIRES_CAPTURE, E.CANCEL): (S.CANCEL_PENDING, (C.CANCEL_AT_PSP,)),
    (S.CANCEL_PENDING, E.PSP_CANCELED): (S.RELEASED, (C.POST_RELEASE,)),
    (S.RELEASED, E.RELEASE_POSTED): (S.CANCELED, ()),
}

#: What resuming a persisted, unfinished state runs: the commands of the transition that led into it.
RESUME: dict[ChargeState, tuple[Command, ...]] = {
    S.PSP_PENDING: (C.CALL_PSP,),
    S.CAPTURED: (C.POST_LEDGER,),
    S.POSTED: (C.RESPOND_SUCCEEDED,),
    S.REFUND_PENDING: (C.REFUND_AT_PSP,),
    S.COMPENSATED: (C.POST_COMPENSATION,),
    S.AUTHORIZED: (C.POST_HOLD,),
    S.CAPTURE_PENDING: (C.CAPTURE_AT_PSP,),
    S.CANCEL_PENDING: (C.CANCEL_AT_PSP,),
    S.RELEASED: (C.POST_RELEASE,),
}

#: The states that resume by an event instead: a payment never submitted, and one whose capture's outcome is
#: unknown (asked again, under the same PSP idempotency key).
RESUME_EVENTS: dict[ChargeState, ChargeEvent] = {S.CREATED: E.SUBMIT, S.UNKNOWN: E.PSP_RETRY}

#: Answering a charge that succeeded is no IO of its own: ``responded`` is persisted with what led there.
AUTOMATIC: dict[Command, ChargeEvent] = {C.RESPOND_SUCCEEDED: E.RESPONDED}

#: Commands whose whole job is to answer the client with the charge's current state.
ANSWERS = frozenset({C.RESPOND_DECLINED, C.RESPOND_PENDING, C.RESPOND_FAILED})

#: What the PSP's word on a capture means to the machine: its answer to ``call_psp``, a ``charge.*`` webhook
#: (``captured`` or ``declined``), or its search by payment id during recovery.
PSP_EVENTS: dict[str, ChargeEvent] = {
    "captured": E.PSP_CAPTURED,
    "declined": E.PSP_DECLINED,
    "unknown": E.PSP_UNKNOWN,
    "authorized": E.PSP_AUTHORIZED,
    "canceled": E.PSP_CANCELED,
}

#: The states still waiting for the PSP's word on the capture: a webhook brings news to them, and recovery
#: asks the PSP what happened (``after_lookup``) rather than capturing again.
AWAITING_PSP = frozenset({S.PSP_PENDING, S.UNKNOWN})

TERMINAL_STATES = frozenset({S.SUCCEEDED, S.DECLINED, S.FAILED, S.CANCELED})

#: How long an authorization lives (Stripe's, for card payments): older, the janitor cancels it, and the PSP
#: lets it go on its own.
AUTHORIZATION_DAYS = 7

#: Where an authorization rests: answered, its hold booked, until it is captured, canceled or expires.
RESTING_STATES = frozenset({S.REQUIRES_CAPTURE})

#: States whose money is held in the ledger as an authorization (booked, and not yet captured or released).
HOLDING = frozenset({S.REQUIRES_CAPTURE, S.CAPTURE_PENDING, S.CANCEL_PENDING, S.RELEASED})

#: States from which the PSP may not be asked to capture again: the money already moved (or never will).
AFTER_CAPTURE = frozenset(
    {S.CAPTURED, S.POSTED, S.SUCCEEDED, S.REFUND_PENDING, S.COMPENSATED, S.AUTHORIZED, *HOLDING, S.CANCELED}
)

MACHINE = machine.Machine(
    ChargeState,
    ChargeEvent,
    TRANSITIONS,
    TERMINAL_STATES,
    resume_events=RESUME_EVENTS,
    resume_commands=RESUME,
    automatic=AUTOMATIC,
    answers=ANSWERS,
    statuses={
        S.SUCCEEDED: "succeeded",
        S.DECLINED: "failed",
        S.FAILED: "failed",
        S.COMPENSATED: "failed",
        # Stripe's word for an uncaptured charge, and for one whose authorization was released
        S.REQUIRES_CAPTURE: "succeeded",
        S.CAPTURE_PENDING: "succeeded",
        S.CANCEL_PENDING: "succeeded",
        S.RELEASED: "succeeded",
        S.CANCELED: "succeeded",
    },
)
Transition: TypeAlias = machine.Transition[ChargeState, ChargeEvent, Command]
Resumption: TypeAlias = machine.Resumption[ChargeEvent, Command]

step = MACHINE.step
allowed_events = MACHINE.allowed_events
is_terminal = MACHINE.is_terminal
resume = MACHINE.resume
chain = MACHINE.chain
with_automatic = MACHINE.with_automatic
decides_answer = MACHINE.decides_answer
public_status = MACHINE.public_status


def after_lookup(state: ChargeState | str, found: str | None) -> tuple[ChargeEvent, ...]:
    """The events recovery applies, in order, to a payment in ``AWAITING_PSP`` once the PSP's search by
    payment id answered: ``found`` is the status of the PSP's charge, None if the PSP never saw the payment.

    Found captured, the capture is booked; authorized, the hold; declined, the decline recorded; found but
    undecided, nothing yet
    (the next sweep asks again). Never seen, nothing was captured: the payment failed, by way of ``unknown``
    if it was still ``psp_pending``."""
    if found is None:
        return (E.PSP_NOT_FOUND,) if MACHINE.state(state) is S.UNKNOWN else (E.PSP_UNKNOWN, E.PSP_NOT_FOUND)
    event = PSP_EVENTS.get(found)
    return (event,) if event in (E.PSP_CAPTURED, E.PSP_DECLINED, E.PSP_AUTHORIZED) else ()


#: The events a committed capture posting completes, in order, from the PSP's answer to the client's.
BOOKED = (E.PSP_CAPTURED, E.LEDGER_POSTED, E.RESPONDED)

#: Where a capture may still be booked: waiting for the PSP's word (on a charge, or on the capture of an
#: authorization), or captured and not yet posted.
BOOKABLE = AWAITING_PSP | {S.CAPTURE_PENDING, S.CAPTURED}

#: The events a committed hold posting completes: the PSP's authorization, and the hold.
HOLD_BOOKED = (E.PSP_AUTHORIZED, E.HOLD_POSTED)

#: The events a committed release posting completes: the PSP's cancel, and the release.
RELEASE_BOOKED = (E.PSP_CANCELED, E.RELEASE_POSTED)


def _fold(state: ChargeState | str, events: tuple[ChargeEvent, ...]) -> tuple[Transition, ...]:
    """The transitions of ``events`` from ``state``: all of them, or all but the first when that one is
    already recorded (the PSP's word persisted, its posting not yet written). Raises ``IllegalTransition``
    from anywhere else."""
    source = MACHINE.state(state)
    for start in (0, 1):
        if events[start] in allowed_events(source):
            done: list[Transition] = []
            for event in events[start:]:
                done.append(step(source, event))
                source = done[-1].target
            return tuple(done)
    raise IllegalTransition(source.value, events[0].value)


def booking(state: ChargeState | str) -> tuple[Transition, ...]:
    """The transitions that commit with a capture's ledger posting, from ``state``: from ``psp_pending``,
    ``unknown`` or ``capture_pending`` the PSP's capture, ``ledger_posted`` and ``responded``; from
    ``captured`` the last two.

    Raises ``IllegalTransition`` from any other state: there is nothing left to book there."""
    return _fold(state, BOOKED)


def booking_refused(state: ChargeState | str) -> tuple[Transition, ...]:
    """What is persisted instead of ``booking(state)`` when the ledger refuses the capture's posting (or
    cannot be reached): the PSP's capture, if not recorded yet, then ``ledger_failed``, whose command
    compensates at the PSP."""
    return (*booking(state)[:-2], step(S.CAPTURED, E.LEDGER_FAILED))


def hold_booking(state: ChargeState | str) -> tuple[Transition, ...]:
    """The transitions that commit with an authorization's hold posting: from ``psp_pending`` or ``unknown``
    the PSP's authorization and the hold; from ``authorized`` the hold."""
    return _fold(state, HOLD_BOOKED)


def release_booking(state: ChargeState | str) -> tuple[Transition, ...]:
    """The transitions that commit with the posting releasing a hold: from ``capture_pending`` or
    ``cancel_pending`` the PSP's cancel and the release; from ``released`` the release."""
    return _fold(state, RELEASE_BOOKED)


def psp_idempotency_key(payment_id: str) -> str:
    """The PSP-side idempotency key for a payment's capture: derived, so every retry reuses it."""
    return f"payray-capture-{payment_id}"


def attempt_key(payment_id: str, psp: str) -> str:
    """The key of a payment's attempt at ``psp`` after it failed over there: a payment tries each PSP at most
    once, so the PSP's name keeps every attempt's key its own (the first keeps ``psp_idempotency_key``)."""
    return f"{psp_idempotency_key(payment_id)}-{psp}"


def psp_capture_key(payment_id: str) -> str:
    """The PSP-side key for capturing an authorization: derived, so every retry captures once."""
    return f"payray-capture-authorized-{payment_id}"


def psp_cancel_key(payment_id: str) -> str:
    """The PSP-side key for releasing an authorization."""
    return f"payray-cancel-{payment_id}"
