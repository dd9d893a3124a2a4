"""The PaymentIntent machine: its own moves before confirmation, and how it follows its charge after."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray import charge
from payray.charge import ChargeEvent, ChargeState
from payray.errors import IllegalTransition
from payray.intent import (
    CHANGEABLE,
    TERMINAL_STATES,
    TOPICS,
    IntentEvent,
    IntentState,
    allowed_events,
    confirmation,
    expected,
    follow,
    step,
)

S = IntentState


def test_confirming_needs_a_payment_method() -> None:
    with pytest.raises(IllegalTransition):
        confirmation(S.REQUIRES_PAYMENT_METHOD, payment_method_given=False)
    brought = confirmation(S.REQUIRES_PAYMENT_METHOD, payment_method_given=True)
    assert [t.event for t in brought] == [IntentEvent.PAYMENT_METHOD_ATTACHED, IntentEvent.CONFIRM]
    assert brought[-1].target is S.PROCESSING
    assert [t.event for t in confirmation(S.REQUIRES_CONFIRMATION, False)] == [IntentEvent.CONFIRM]


@pytest.mark.parametrize("state", [S.PROCESSING, S.REQUIRES_CAPTURE, S.SUCCEEDED, S.CANCELED])
def test_nothing_past_confirmation_is_confirmed_or_canceled_by_the_intent_alone(state: IntentState) -> None:
    with pytest.raises(IllegalTransition):
        confirmation(state, payment_method_given=True)
    assert IntentEvent.CANCEL not in allowed_events(state)


def test_only_an_unconfirmed_intent_is_canceled_on_its_own_and_changes_what_it_charges() -> None:
    cancelable = {s for s in S if IntentEvent.CANCEL in allowed_events(s)}
    assert cancelable == set(CHANGEABLE) == {S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CONFIRMATION}
    assert step(S.REQUIRES_CONFIRMATION, IntentEvent.CANCEL).target is S.CANCELED


def test_terminal_states_have_no_way_out() -> None:
    assert {S.SUCCEEDED, S.CANCELED} == TERMINAL_STATES
    for state in TERMINAL_STATES:
        assert allowed_events(state) == []


def test_every_state_an_intent_rests_in_is_announced_as_stripe_names_it() -> None:
    assert TOPICS[S.SUCCEEDED] == "payment_intent.succeeded"
    assert TOPICS[S.REQUIRES_CAPTURE] == "payment_intent.amount_capturable_updated"
    assert TOPICS[S.REQUIRES_PAYMENT_METHOD] == "payment_intent.payment_failed"
    assert TOPICS[S.CANCELED] == "payment_intent.canceled"
    assert S.PROCESSING not in TOPICS  # a card's processing passes within the request


def test_a_decline_sends_the_intent_back_for_another_payment_method() -> None:
    failed = follow(S.PROCESSING, ChargeState.DECLINED)
    assert failed is not None and failed.target is S.REQUIRES_PAYMENT_METHOD
    again = confirmation(failed.target, payment_method_given=True)
    assert again[-1].target is S.PROCESSING


def test_a_charge_state_that_changes_nothing_is_no_transition() -> None:
    assert follow(S.PROCESSING, ChargeState.UNKNOWN) is None
    assert follow(S.PROCESSING, ChargeState.CAPTURED) is None
    assert follow(S.SUCCEEDED, ChargeState.SUCCEEDED) is None  # heard twice: once is enough


@given(st.lists(st.integers(min_value=0, max_value=10), max_size=30))
def test_an_intent_following_any_walk_of_its_charge_says_what_the_charge_says(choices: list[int]) -> None:
    """From its confirmation on, whatever path the charge takes (declines, unknowns, compensations, holds,
    captures in part, cancels, expiries), the intent that follows each step shows ``expected(charge)``:
    the invariant the live check (``intents_follow_charges``) asserts."""
    state = charge.step(ChargeState.CREATED, ChargeEvent.SUBMIT).target
    intent = S.PROCESSING
    for choice in choices:
        events = charge.allowed_events(state)
        if not events:
            break
        state = charge.step(state, events[choice % len(events)]).target
        followed = follow(intent, state)
        if followed is not None:
            intent = followed.target
        assert intent is expected(state), (state, intent)
    if charge.is_terminal(state) or state in charge.RESTING_STATES:
        assert intent in (S.SUCCEEDED, S.CANCELED, S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CAPTURE)
