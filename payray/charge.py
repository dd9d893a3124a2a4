"""The charge state machine, sans IO: ``(state, event) -> (state, commands)``.

The service's asyncio driver and the simulator's SimPy driver both execute the commands this machine
returns; the machine itself never touches a socket, a clock or a database. Every transition is meant to be
persisted before its commands run, so a crash anywhere resumes from the last recorded state. One fold is
allowed, and both drivers make it: a capture's ledger posting is written in one database transaction with
the transitions it completes (``booking``), so the PSP's capture, the posting and the stored answer commit
together or not at all; a crash before that commit leaves ``psp_pending``, which recovery resolves by asking
the PSP.

    created --submit--> psp_pending                     [call_psp]
    psp_pending --psp_captured--> captured              [post_ledger]
    psp_pending --psp_declined--> declined              [respond_declined]      (terminal)
    psp_pending --psp_unknown--> unknown                [respond_pending]
    unknown --psp_retry--> psp_pending                  [call_psp]   (same PSP idempotency key)
    unknown --psp_captured|psp_declined--> ...          (a webhook or lookup answered first)
    unknown --psp_not_found--> failed                   [respond_failed]        (terminal)
    captured --ledger_posted--> posted                  [respond_succeeded]
    captured --ledger_failed--> refund_pending          [refund_at_psp]         (compensation)
    posted --responded--> succeeded                                              (terminal)
    refund_pending --psp_refunded--> compensated        [post_compensation]
    refund_pending --psp_refund_unknown--> refund_pending [refund_at_psp]
    compensated --compensation_posted--> failed         [respond_failed]        (terminal)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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


class Command(StrEnum):
    CALL_PSP = "call_psp"
    POST_LEDGER = "post_ledger"
    RESPOND_SUCCEEDED = "respond_succeeded"
    RESPOND_DECLINED = "respond_declined"
    RESPOND_PENDING = "respond_pending"
    RESPOND_FAILED = "respond_failed"
    REFUND_AT_PSP = "refund_at_psp"
    POST_COMPENSATION = "post_compensation"


S, E, C = ChargeState, ChargeEvent, Command

#: The whole machine as data: (state, event) -> (next state, commands to run once it is persisted).
TRANSITIONS: dict[tuple[ChargeState, ChargeEvent], tuple[ChargeState, tuple[Command, ...]]] = {
    (S.CREATED, E.SUBMIT): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.PSP_PENDING, E.PSP_CAPTURED): (S.CAPTURED, (C.POST_LEDGER,)),
    (S.PSP_PENDING, E.PSP_DECLINED): (S.DECLINED, (C.RESPOND_DECLINED,)),
    (S.PSP_PENDING, E.PSP_UNKNOWN): (S.UNKNOWN, (C.RESPOND_PENDING,)),
    (S.UNKNOWN, E.PSP_RETRY): (S.PSP_PENDING, (C.CALL_PSP,)),
    (S.UNKNOWN, E.PSP_CAPTURED): (S.CAPTURED, (C.POST_LEDGER,)),
    (S.UNKNOWN, E.PSP_DECLINED): (S.DECLINED, (C.RESPOND_DECLINED,)),
    (S.UNKNOWN, E.PSP_NOT_FOUND): (S.FAILED, (C.RESPOND_FAILED,)),
    (S.CAPTURED, E.LEDGER_POSTED): (S.POSTED, (C.RESPOND_SUCCEEDED,)),
    (S.CAPTURED, E.LEDGER_FAILED): (S.REFUND_PENDING, (C.REFUND_AT_PSP,)),
    (S.POSTED, E.RESPONDED): (S.SUCCEEDED, ()),
    (S.REFUND_PENDING, E.PSP_REFUNDED): (S.COMPENSATED, (C.POST_COMPENSATION,)),
    (S.REFUND_PENDING, E.PSP_REFUND_UNKNOWN): (S.REFUND_PENDING, (C.REFUND_AT_PSP,)),
    (S.COMPENSATED, E.COMPENSATION_POSTED): (S.FAILED, (C.RESPOND_FAILED,)),
}

#: What resuming a persisted, unfinished state runs: the commands of the transition that led into it (CREATED
#: and UNKNOWN resume by an event instead: SUBMIT, PSP_RETRY).
RESUME: dict[ChargeState, tuple[Command, ...]] = {
    S.PSP_PENDING: (C.CALL_PSP,),
    S.CAPTURED: (C.POST_LEDGER,),
    S.POSTED: (C.RESPOND_SUCCEEDED,),
    S.REFUND_PENDING: (C.REFUND_AT_PSP,),
    S.COMPENSATED: (C.POST_COMPENSATION,),
}

TERMINAL_STATES = frozenset({S.SUCCEEDED, S.DECLINED, S.FAILED})

#: States from which the PSP may not be asked to capture again: the money already moved (or never will).
AFTER_CAPTURE = frozenset({S.CAPTURED, S.POSTED, S.SUCCEEDED, S.REFUND_PENDING, S.COMPENSATED})


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of the machine: what to persist (``source --event--> target``) and then what to run."""

    source: ChargeState
    event: ChargeEvent
    target: ChargeState
    commands: tuple[Command, ...]


def step(state: ChargeState | str, event: ChargeEvent | str) -> Transition:
    """The transition for ``event`` in ``state``; raises ``IllegalTransition`` if there is none."""
    source = state if type(state) is ChargeState else ChargeState(state)
    ev = event if type(event) is ChargeEvent else ChargeEvent(event)
    try:
        target, commands = TRANSITIONS[(source, ev)]
    except KeyError:
        raise IllegalTransition(source.value, ev.value) from None
    return Transition(source, ev, target, commands)


#: The events a committed capture posting completes, in order, from the PSP's answer to the client's.
BOOKED = (E.PSP_CAPTURED, E.LEDGER_POSTED, E.RESPONDED)


def booking(state: ChargeState | str) -> tuple[Transition, ...]:
    """The transitions that commit with a capture's ledger posting, from ``state``: from ``psp_pending`` (or
    ``unknown``) the PSP's capture, ``ledger_posted`` and ``responded``; from ``captured`` the last two.

    Raises ``IllegalTransition`` from any other state: there is nothing left to book there."""
    source = state if type(state) is ChargeState else ChargeState(state)
    events = BOOKED[1:] if source is S.CAPTURED else BOOKED
    chain: list[Transition] = []
    for event in events:
        chain.append(step(source, event))
        source = chain[-1].target
    return tuple(chain)


def allowed_events(state: ChargeState | str) -> list[ChargeEvent]:
    source = ChargeState(state)
    return [event for (s, event) in TRANSITIONS if s == source]


def is_terminal(state: ChargeState | str) -> bool:
    return ChargeState(state) in TERMINAL_STATES


def psp_idempotency_key(payment_id: str) -> str:
    """The PSP-side idempotency key for a payment's capture: derived, so every retry reuses it."""
    return f"payray-capture-{payment_id}"


def public_status(state: ChargeState | str) -> str:
    """The API's ``status`` for a charge in ``state``: ``succeeded``, ``failed`` or ``pending``."""
    s = ChargeState(state)
    if s is S.SUCCEEDED:
        return "succeeded"
    if s in (S.DECLINED, S.FAILED, S.COMPENSATED):
        return "failed"
    return "pending"
