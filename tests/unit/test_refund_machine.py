"""The refund state machine as data: every path ends settled, and funds are held exactly while booked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.errors import IllegalTransition
from payray.refund import (
    MACHINE,
    PSP_EVENTS,
    RESUME,
    TERMINAL_STATES,
    TRANSITIONS,
    RefundCommand,
    RefundEvent,
    RefundState,
    allowed_events,
    holds_funds,
    is_terminal,
    psp_refund_key,
    public_status,
    resume,
    step,
)


def test_terminal_states_allow_no_event_and_every_other_state_can_finish() -> None:
    for state in RefundState:
        if is_terminal(state):
            assert allowed_events(state) == []
        else:
            assert allowed_events(state), state
    # from every state some path of events reaches a terminal state
    can_finish = set(TERMINAL_STATES)
    for _ in RefundState:
        can_finish |= {s for (s, _e), (t, _c) in TRANSITIONS.items() if t in can_finish}
    assert can_finish == set(RefundState)


def test_every_non_terminal_state_but_the_answered_pending_one_has_a_resume_command() -> None:
    for state in RefundState:
        if is_terminal(state) or state is RefundState.PSP_UNKNOWN:  # resumed by a PSP_RETRY event
            assert state not in RESUME
        else:
            assert state in RESUME


def test_an_illegal_event_is_refused() -> None:
    with pytest.raises(IllegalTransition):
        step(RefundState.SUCCEEDED, RefundEvent.PSP_REFUNDED)
    with pytest.raises(IllegalTransition):
        step(RefundState.PENDING, RefundEvent.PSP_REFUNDED)  # never at the PSP before the debit


@given(st.lists(st.sampled_from(list(RefundEvent)), max_size=30))
def test_funds_are_held_exactly_while_the_ledger_holds_the_refund(events: list[RefundEvent]) -> None:
    """Drive the machine with arbitrary events, running its ledger commands against a model ledger."""
    state = RefundState.PENDING
    booked = reversed_ = False
    psp_asked = 0
    for event in events:
        if event not in allowed_events(state):
            with pytest.raises(IllegalTransition):
                step(state, event)
            continue
        transition = step(state, event)
        if event in (RefundEvent.FUNDS_HELD, RefundEvent.REFUND_BOOKED):
            booked = True  # the wallet's posting
        if event is RefundEvent.REVERSAL_POSTED:
            reversed_ = True
        if RefundCommand.REFUND_AT_PSP in transition.commands:
            assert booked and not reversed_  # money leaves through the PSP only once it left the balance
            psp_asked += 1
        state = transition.target
        assert holds_funds(state) == (booked and not reversed_)
    if state is RefundState.SUCCEEDED:
        assert booked and not reversed_ and psp_asked >= 1
    if state is RefundState.FAILED:
        assert booked and reversed_


def test_statuses_and_keys() -> None:
    assert public_status(RefundState.SUCCEEDED) == "succeeded"
    assert public_status(RefundState.FAILED) == "failed"
    assert {public_status(s) for s in RefundState if not is_terminal(s)} == {"pending"}
    assert psp_refund_key("re_1") == psp_refund_key("re_1") != psp_refund_key("re_2")


@given(st.lists(st.sampled_from(list(RefundEvent)), max_size=30))
def test_a_refund_learned_from_the_psp_is_booked_and_never_sent_to_the_psp(events: list[RefundEvent]) -> None:
    state = RefundState.BOOKING
    for event in events:
        if event not in allowed_events(state):
            continue
        transition = step(state, event)
        assert RefundCommand.REFUND_AT_PSP not in transition.commands
        state = transition.target
    assert state in (RefundState.BOOKING, RefundState.SUCCEEDED)


@given(st.sampled_from(list(RefundState)))
def test_every_state_resumes_by_an_allowed_event_or_the_command_that_led_into_it(state: RefundState) -> None:
    resumption = resume(state)
    if is_terminal(state):
        assert resumption.event is None and resumption.commands == ()
    elif resumption.event is not None:
        assert resumption.event in allowed_events(state) and resumption.commands == ()
    else:
        assert len(resumption.commands) == 1
        assert resumption.commands == RESUME[state]
    assert resume(RefundState.PSP_UNKNOWN).event is RefundEvent.PSP_RETRY


def test_every_psp_answer_to_a_refund_is_an_event_the_machine_takes_once_funds_are_held() -> None:
    assert set(PSP_EVENTS) == {"refunded", "failed", "unknown"}
    for event in PSP_EVENTS.values():
        assert event in allowed_events(RefundState.FUNDS_HELD)
    assert PSP_EVENTS["refunded"] in allowed_events(RefundState.PSP_UNKNOWN)  # charge.refunded settles it
    assert PSP_EVENTS["failed"] is RefundEvent.PSP_REFUSED


def test_each_transition_runs_one_command_and_those_that_answer_are_known() -> None:
    for key in TRANSITIONS:
        transition = step(*key)
        assert len(transition.commands) == 1
        assert MACHINE.decides_answer(transition) == (transition.commands == (RefundCommand.RESPOND,))
