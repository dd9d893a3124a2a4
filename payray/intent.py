"""The PaymentIntent state machine, sans IO: ``(state, event) -> (state, commands)``.

An intent is the merchant's plan to be paid; its charges do the paying. Before its confirmation the intent
moves by the merchant's word alone (a payment method attached, a cancel). Confirming it creates a charge,
in the same transaction as the ``confirm`` transition, and from then on the intent follows that charge:
each charge transition that changes what the intent is (``FOLLOWS``) is written with the intent's own
transition in one statement, so an intent never says anything its charge does not.

    requires_payment_method --payment_method_attached--> requires_confirmation
    requires_confirmation --payment_method_attached--> requires_confirmation      (another one)
    requires_confirmation --confirm--> processing                   [create_charge]
    processing --charge_authorized--> requires_capture                              (capture_method=manual)
    processing --charge_succeeded--> succeeded                                      (terminal)
    processing --charge_failed--> requires_payment_method                           (last_payment_error)
    requires_capture --charge_capturing|charge_releasing--> processing             (capture, cancel, expiry)
    processing --charge_released--> canceled                                        (terminal)
    requires_payment_method|requires_confirmation --cancel--> canceled             (no charge to release)

A capture or cancel of a ``requires_capture`` intent is its charge's capture or cancel: the charge machine
does the work, and the intent follows.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from payray import machine
from payray.charge import ChargeState


class IntentState(StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"


class IntentEvent(StrEnum):
    PAYMENT_METHOD_ATTACHED = "payment_method_attached"
    CONFIRM = "confirm"
    CANCEL = "cancel"
    CHARGE_AUTHORIZED = "charge_authorized"
    CHARGE_SUCCEEDED = "charge_succeeded"
    CHARGE_FAILED = "charge_failed"
    CHARGE_CAPTURING = "charge_capturing"
    CHARGE_RELEASING = "charge_releasing"
    CHARGE_RELEASED = "charge_released"


class Command(StrEnum):
    CREATE_CHARGE = "create_charge"


S, E, C = IntentState, IntentEvent, Command

TRANSITIONS: dict[tuple[IntentState, IntentEvent], tuple[IntentState, tuple[Command, ...]]] = {
    (S.REQUIRES_PAYMENT_METHOD, E.PAYMENT_METHOD_ATTACHED): (S.REQUIRES_CONFIRMATION, ()),
    (S.REQUIRES_CONFIRMATION, E.PAYMENT_METHOD_ATTACHED): (S.REQUIRES_CONFIRMATION, ()),
    (S.REQUIRES_CONFIRMATION, E.CONFIRM): (S.PROCESSING, (C.CREATE_CHARGE,)),
    (S.PROCESSING, E.CHARGE_AUTHORIZED): (S.REQUIRES_CAPTURE, ()),
    (S.PROCESSING, E.CHARGE_SUCCEEDED): (S.SUCCEEDED, ()),
    (S.PROCESSING, E.CHARGE_FAILED): (S.REQUIRES_PAYMENT_METHOD, ()),
    (S.REQUIRES_CAPTURE, E.CHARGE_CAPTURING): (S.PROCESSING, ()),
    (S.REQUIRES_CAPTURE, E.CHARGE_RELEASING): (S.PROCESSING, ()),
    (S.PROCESSING, E.CHARGE_RELEASED): (S.CANCELED, ()),
    (S.REQUIRES_PAYMENT_METHOD, E.CANCEL): (S.CANCELED, ()),
    (S.REQUIRES_CONFIRMATION, E.CANCEL): (S.CANCELED, ()),
}

TERMINAL_STATES = frozenset({S.SUCCEEDED, S.CANCELED})

MACHINE = machine.Machine(
    IntentState,
    IntentEvent,
    TRANSITIONS,
    TERMINAL_STATES,
    # nothing resumes by itself: a ``processing`` intent waits for its charge, which recovery finishes
    resume_events={},
    resume_commands={},
    statuses={state: state.value for state in IntentState},
)
Transition: TypeAlias = machine.Transition[IntentState, IntentEvent, Command]

step = MACHINE.step
allowed_events = MACHINE.allowed_events
is_terminal = MACHINE.is_terminal

#: What a charge's state means to the intent that confirmed it; a state not listed changes nothing (the
#: charge is still on its way, and the intent ``processing``).
FOLLOWS: dict[ChargeState, IntentEvent] = {
    ChargeState.REQUIRES_CAPTURE: E.CHARGE_AUTHORIZED,
    ChargeState.SUCCEEDED: E.CHARGE_SUCCEEDED,
    ChargeState.DECLINED: E.CHARGE_FAILED,
    ChargeState.FAILED: E.CHARGE_FAILED,
    ChargeState.CAPTURE_PENDING: E.CHARGE_CAPTURING,
    ChargeState.CANCEL_PENDING: E.CHARGE_RELEASING,
    ChargeState.CANCELED: E.CHARGE_RELEASED,
}


def follow(intent: IntentState | str, charge: ChargeState | str) -> Transition | None:
    """The intent's transition when its charge reaches ``charge``; None when that changes nothing for it.

    A charge that skips a resting state on its way (authorized and captured before the intent heard of
    the first) cannot happen: an authorization rests until the merchant's capture, so every step the
    intent takes is one charge transition's."""
    event = FOLLOWS.get(ChargeState(charge))
    if event is None or event not in allowed_events(intent):
        return None
    return step(intent, event)


def expected(charge: ChargeState | str) -> IntentState:
    """The status an intent shows while its latest charge is in ``charge``: what the invariants check."""
    event = FOLLOWS.get(ChargeState(charge))
    targets = {e: target for (_, e), (target, _) in TRANSITIONS.items()}
    return S.PROCESSING if event is None else targets[event]


#: The topic each state an intent reaches is announced under, as Stripe names its events. ``processing`` is
#: not announced: for a card it passes within the request (Stripe announces it for slower payment methods).
TOPICS: dict[IntentState, str] = {
    S.REQUIRES_CAPTURE: "payment_intent.amount_capturable_updated",
    S.SUCCEEDED: "payment_intent.succeeded",
    S.REQUIRES_PAYMENT_METHOD: "payment_intent.payment_failed",
    S.CANCELED: "payment_intent.canceled",
}

#: Where a merchant may still change what the intent charges (amount, currency, payment method).
CHANGEABLE = frozenset({S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CONFIRMATION})


def confirmation(intent: IntentState | str, payment_method_given: bool) -> tuple[Transition, ...]:
    """The transitions of a confirm: attaching the payment method it brings, if any, then ``confirm``.
    Raises ``IllegalTransition`` where the intent cannot be confirmed (nothing to pay with, or past it)."""
    chain: list[Transition] = []
    state = MACHINE.state(intent)
    if payment_method_given:
        chain.append(step(state, E.PAYMENT_METHOD_ATTACHED))
        state = chain[-1].target
    chain.append(step(state, E.CONFIRM))
    return tuple(chain)
