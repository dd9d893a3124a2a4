"""The charge state machine: its table, its safety (never two captures) and its liveness."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.charge import (
    AFTER_CAPTURE,
    AUTOMATIC,
    AWAITING_PSP,
    BOOKABLE,
    PSP_EVENTS,
    RESTING_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    ChargeEvent,
    ChargeState,
    Command,
    after_lookup,
    allowed_events,
    booking,
    booking_refused,
    chain,
    decides_answer,
    is_terminal,
    psp_idempotency_key,
    public_status,
    resume,
    step,
    with_automatic,
)
from payray.errors import IllegalTransition


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL_STATES:
        assert allowed_events(state) == []
        assert is_terminal(state)


def test_every_state_is_reachable_from_created_and_can_finish() -> None:
    reachable, frontier = {ChargeState.CREATED}, [ChargeState.CREATED]
    while frontier:
        state = frontier.pop()
        for event in allowed_events(state):
            target = step(state, event).target
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(ChargeState)
    for state in ChargeState:
        finishing, seen = [state], {state}
        while finishing and not any(is_terminal(s) for s in finishing):
            nxt = [step(s, e).target for s in finishing for e in allowed_events(s)]
            finishing = [s for s in nxt if s not in seen]
            seen.update(finishing)
        assert any(is_terminal(s) for s in seen), f"{state} cannot reach a terminal state"


def test_illegal_event_names_state_and_event() -> None:
    with pytest.raises(IllegalTransition) as raised:
        step(ChargeState.SUCCEEDED, ChargeEvent.PSP_CAPTURED)
    assert raised.value.state == "succeeded" and raised.value.event == "psp_captured"


def test_each_transition_asks_for_at_most_one_command() -> None:
    """The drivers run one command, then feed its outcome back as the next event."""
    assert all(len(commands) <= 1 for _target, commands in TRANSITIONS.values())


def test_call_psp_is_never_a_command_after_capture() -> None:
    for (source, _event), (target, commands) in TRANSITIONS.items():
        if source in AFTER_CAPTURE or target in AFTER_CAPTURE:
            assert Command.CALL_PSP not in commands, (source, target)


def test_public_status() -> None:
    assert public_status("succeeded") == "succeeded"
    assert public_status("declined") == "failed"
    assert public_status("unknown") == "pending"
    assert psp_idempotency_key("ch_1") == psp_idempotency_key("ch_1") != psp_idempotency_key("ch_2")


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=60))
def test_no_event_sequence_captures_twice(choices: list[int]) -> None:
    """Walk the machine with arbitrary legal events, the PSP capturing on every call it is asked to make.

    The PSP deduplicates by idempotency key, as Stripe does; the property is that the machine never
    asks for a capture under a second key nor after the money moved, so captures stay at most one.
    """
    payment_id = "ch_prop"
    state = ChargeState.CREATED
    keys_captured: set[str] = set()
    captured_events = 0
    history = []
    for choice in choices:
        events = allowed_events(state)
        if not events:
            break
        transition = step(state, events[choice % len(events)])
        history.append(transition)
        if transition.event is ChargeEvent.PSP_CAPTURED:
            captured_events += 1
        if Command.CALL_PSP in transition.commands:
            assert state not in AFTER_CAPTURE and captured_events == 0
            keys_captured.add(psp_idempotency_key(payment_id))
        state = transition.target
    assert len(keys_captured) <= 1
    assert captured_events <= 1
    # Every terminal state was reached through recorded transitions only, each from the previous target.
    for before, after in itertools.pairwise(history):
        assert after.source == before.target
    if history:
        assert history[0].source is ChargeState.CREATED


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=40))
def test_replaying_a_recorded_log_gives_the_same_commands(choices: list[int]) -> None:
    state, log, commands = ChargeState.CREATED, [], []
    for choice in choices:
        events = allowed_events(state)
        if not events:
            break
        transition = step(state, events[choice % len(events)])
        log.append(transition.event)
        commands.append(transition.commands)
        state = transition.target
    replayed, state = [], ChargeState.CREATED
    for event in log:
        transition = step(state, event)
        replayed.append(transition.commands)
        state = transition.target
    assert replayed == commands


def test_a_capture_is_booked_from_the_psps_answer_to_the_clients_in_one_chain() -> None:
    for state in (ChargeState.PSP_PENDING, ChargeState.UNKNOWN):
        chain = booking(state)
        assert [t.event for t in chain] == [
            ChargeEvent.PSP_CAPTURED,
            ChargeEvent.LEDGER_POSTED,
            ChargeEvent.RESPONDED,
        ]
        assert chain[0].source is state and chain[0].commands == (Command.POST_LEDGER,)
        assert all(a.target is b.source for a, b in itertools.pairwise(chain))
        assert chain[-1].target is ChargeState.SUCCEEDED and chain[-1].commands == ()
    from_captured = [t.event for t in booking(ChargeState.CAPTURED)]
    assert from_captured == [ChargeEvent.LEDGER_POSTED, ChargeEvent.RESPONDED]
    from_capture_pending = [t.event for t in booking(ChargeState.CAPTURE_PENDING)]
    assert from_capture_pending == [t.event for t in booking(ChargeState.PSP_PENDING)]
    for state in set(ChargeState) - BOOKABLE:
        with pytest.raises(IllegalTransition):
            booking(state)


@given(st.sampled_from(list(ChargeState)))
def test_every_state_resumes_by_an_allowed_event_or_the_commands_that_led_into_it(state: ChargeState) -> None:
    resumption = resume(state)
    if is_terminal(state) or state in RESTING_STATES:
        assert resumption.event is None and resumption.commands == ()
    elif resumption.event is not None:
        assert resumption.event in allowed_events(state) and resumption.commands == ()
    else:
        assert resumption.commands
        assert any(
            target is state and commands == resumption.commands for target, commands in TRANSITIONS.values()
        )


def test_a_payment_whose_capture_is_unknown_resumes_by_asking_the_psp_again() -> None:
    assert resume(ChargeState.UNKNOWN).event is ChargeEvent.PSP_RETRY
    assert resume(ChargeState.CREATED).event is ChargeEvent.SUBMIT
    assert resume(ChargeState.PSP_PENDING).commands == (Command.CALL_PSP,)
    assert resume("captured").commands == (Command.POST_LEDGER,)


@given(st.sampled_from(sorted(AWAITING_PSP)), st.sampled_from(["captured", "declined", "unknown", None]))
def test_what_recovery_does_after_a_lookup_is_a_legal_path(state: ChargeState, found: str | None) -> None:
    events = after_lookup(state, found)
    source = state
    for event in events:
        source = step(source, event).target
    if found is None:
        assert events[-1] is ChargeEvent.PSP_NOT_FOUND and source is ChargeState.FAILED
    elif found == "captured":
        assert events == (ChargeEvent.PSP_CAPTURED,)
        assert booking(state)[0].event is ChargeEvent.PSP_CAPTURED  # found captured: booked
    elif found == "declined":
        assert events == (ChargeEvent.PSP_DECLINED,) and source is ChargeState.DECLINED
    else:
        assert events == ()  # the PSP cannot say yet: the next sweep asks again
    if events:  # recovery never captures again
        assert Command.CALL_PSP not in step(state, events[0]).commands


def test_a_payment_the_psp_never_saw_fails_by_way_of_unknown() -> None:
    assert after_lookup(ChargeState.PSP_PENDING, None) == (ChargeEvent.PSP_UNKNOWN, ChargeEvent.PSP_NOT_FOUND)
    assert after_lookup(ChargeState.UNKNOWN, None) == (ChargeEvent.PSP_NOT_FOUND,)


def test_every_psp_answer_to_a_capture_is_an_event_the_machine_takes_while_waiting() -> None:
    assert set(PSP_EVENTS) == {"captured", "declined", "unknown", "authorized", "canceled"}
    for answer in ("captured", "declined", "unknown", "authorized"):
        assert PSP_EVENTS[answer] in allowed_events(ChargeState.PSP_PENDING)
    for waiting in (ChargeState.CAPTURE_PENDING, ChargeState.CANCEL_PENDING):
        assert PSP_EVENTS["canceled"] in allowed_events(waiting)
    assert PSP_EVENTS["captured"] in allowed_events(ChargeState.CAPTURE_PENDING)
    for webhook in ("captured", "declined"):  # charge.succeeded, charge.failed
        assert PSP_EVENTS[webhook] in allowed_events(ChargeState.UNKNOWN)


@given(st.sampled_from(sorted(TRANSITIONS)))
def test_an_events_chain_ends_where_something_is_left_to_do(key: tuple[ChargeState, ChargeEvent]) -> None:
    """After an automatic command comes its event in the same transaction: no chain ends asking for one."""
    done = chain(*key)
    assert done[0] == step(*key)
    assert all(a.target is b.source for a, b in itertools.pairwise(done))
    assert not (len(done[-1].commands) == 1 and done[-1].commands[0] in AUTOMATIC)
    assert with_automatic(done) == done


def test_a_posted_capture_is_answered_without_io() -> None:
    done = chain(ChargeState.CAPTURED, ChargeEvent.LEDGER_POSTED)
    assert [t.event for t in done] == [ChargeEvent.LEDGER_POSTED, ChargeEvent.RESPONDED]
    assert done[-1].target is ChargeState.SUCCEEDED and decides_answer(done[-1])
    assert not decides_answer(step(ChargeState.CREATED, ChargeEvent.SUBMIT))
    assert decides_answer(step(ChargeState.PSP_PENDING, ChargeEvent.PSP_UNKNOWN))


def test_a_capture_is_bookable_exactly_where_booking_has_a_chain() -> None:
    for state in ChargeState:
        if state in BOOKABLE:
            assert booking(state)
        else:
            with pytest.raises(IllegalTransition):
                booking(state)


@pytest.mark.parametrize("state", sorted(BOOKABLE))
def test_a_refused_booking_records_the_capture_and_leads_to_compensation(state: ChargeState) -> None:
    refused = booking_refused(state)
    assert refused[0].source is state and refused[-1].event is ChargeEvent.LEDGER_FAILED
    assert refused[-1].target is ChargeState.REFUND_PENDING
    assert refused[-1].commands == (Command.REFUND_AT_PSP,)
    assert all(a.target is b.source for a, b in itertools.pairwise(refused))
    assert ChargeEvent.LEDGER_POSTED not in {t.event for t in refused}  # nothing of the posting is recorded
