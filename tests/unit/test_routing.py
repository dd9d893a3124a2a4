"""Routing between PSPs: the cascade rule, a merchant's PSP list, and the circuit breaker as a state machine
(hypothesis drives it with any sequence of answers and clock steps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from payray.routing import (
    PSPS,
    RETRYABLE_ELSEWHERE,
    Breaker,
    Router,
    RoutingError,
    checked_priorities,
    may_cascade,
)

HARD_DECLINES = (
    "insufficient_funds",
    "fraudulent",
    "lost_card",
    "stolen_card",
    "expired_card",
    "card_declined",
)


def test_only_a_definite_failure_cascades() -> None:
    assert may_cascade("not_sent") and may_cascade("refused")
    assert not may_cascade("not_sent", first_call=False) and may_cascade("refused", first_call=False)
    for end in ("captured", "authorized", "unknown"):
        assert not may_cascade(end), end  # an unknown may have captured: resolved at its own PSP
    for code in HARD_DECLINES:
        assert not may_cascade("declined", code), code  # the same bank would say no again
    for code in RETRYABLE_ELSEWHERE:
        assert may_cascade("declined", code), code
    assert not may_cascade("declined", None)


@given(st.sampled_from(["captured", "authorized", "unknown"]), st.one_of(st.none(), st.text(max_size=20)))
def test_an_attempt_that_may_have_moved_money_never_cascades(end: str, code: str | None) -> None:
    assert not may_cascade(end, code)  # type: ignore[arg-type]


def test_a_merchants_routing_names_known_psps_once() -> None:
    assert checked_priorities(["braintree", "stripe"]) == ("braintree", "stripe")
    for bad, message in (
        ([], "one or more PSPs"),
        ("stripe", "one or more PSPs"),
        (["stripe", "adyen"], "unknown PSP 'adyen'"),
        (["stripe", "stripe"], "once"),
    ):
        with pytest.raises(RoutingError, match=message):
            checked_priorities(bad)  # type: ignore[arg-type]


def test_the_breaker_opens_after_bad_answers_in_a_row_and_a_probe_closes_it() -> None:
    breaker = Breaker(threshold=3, open_s=5.0, slow_s=2.0)
    for t in (0.0, 0.1):
        breaker.record(t, ok=False, seconds=0.01)
    breaker.record(0.2, ok=True, seconds=0.01)  # a good answer breaks the run
    for t in (0.3, 0.4):
        breaker.record(t, ok=False, seconds=0.01)
    assert breaker.allows(0.5)
    breaker.record(0.5, ok=True, seconds=2.5)  # slow counts as bad
    assert breaker.state == "open" and not breaker.allows(5.4)
    assert breaker.allows(5.6) and breaker.state == "half_open"  # the probe
    assert not breaker.allows(5.7)  # one probe at a time
    breaker.record(5.8, ok=True, seconds=0.05)
    assert breaker.state == "closed" and breaker.allows(5.9)


def test_a_lost_probe_frees_its_slot_after_the_open_period() -> None:
    breaker = Breaker(threshold=1, open_s=5.0)
    breaker.record(0.0, ok=False, seconds=0.0)
    assert breaker.allows(5.0)  # probe sent, never answered
    assert not breaker.allows(9.9)
    assert breaker.allows(10.0)


def test_the_router_skips_an_open_psp_and_spends_only_the_chosen_probe() -> None:
    router = Router()
    for _ in range(5):
        router.breakers["stripe"].record(0.0, ok=False, seconds=0.0)
    assert router.next_psp(["stripe", "braintree"], [], 1.0) == "braintree"
    assert router.next_psp(["stripe", "braintree"], ["braintree"], 1.0) is None
    assert router.next_psp(["stripe"], [], 1.0) == "stripe"  # all open: the first, rather than refusing
    assert router.next_psp(["braintree", "stripe"], [], 6.0) == "braintree"
    assert router.breakers["stripe"].probe_since is None  # not asked: its probe is still there
    assert router.next_psp(["stripe", "braintree"], [], 6.0) == "stripe"  # the probe


class BreakerMachine(RuleBasedStateMachine):
    """Any answers at any times: the breaker never lets two probes out at once, and never lets a payment
    through while open before its period has passed."""

    def __init__(self) -> None:
        super().__init__()
        self.breaker = Breaker(threshold=3, open_s=5.0, slow_s=2.0)
        self.now = 0.0
        self.last_probe: float | None = None  # in the current half-open stint

    @rule(step=st.floats(min_value=0, max_value=3, allow_nan=False))
    def time_passes(self, step: float) -> None:
        self.now += step

    @rule()
    def a_payment_asks(self) -> None:
        before, opened_at = self.breaker.state, self.breaker.opened_at
        allowed = self.breaker.allows(self.now)
        if before == "open" and self.now - opened_at < self.breaker.open_s:
            assert not allowed
        if allowed and self.breaker.state == "half_open":
            if self.last_probe is not None:  # a second probe only once the first is given up on
                assert self.now - self.last_probe >= self.breaker.open_s
            self.last_probe = self.now

    @precondition(lambda self: self.breaker.state != "open")
    @rule(ok=st.booleans(), seconds=st.floats(min_value=0, max_value=4, allow_nan=False))
    def an_answer(self, ok: bool, seconds: float) -> None:
        was_half_open = self.breaker.state == "half_open"
        self.breaker.record(self.now, ok=ok, seconds=seconds)
        if was_half_open:
            self.last_probe = None
            good = ok and seconds < self.breaker.slow_s
            assert self.breaker.state == ("closed" if good else "open")

    @invariant()
    def closed_means_fewer_bad_answers_than_the_threshold(self) -> None:
        if self.breaker.state == "closed":
            assert self.breaker.bad_in_a_row < self.breaker.threshold


BreakerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestBreaker = BreakerMachine.TestCase


def test_every_psp_has_a_breaker() -> None:
    assert set(Router().breakers) == set(PSPS)
