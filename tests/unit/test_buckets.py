"""The token bucket's arithmetic: never more than the burst and the rate allow, never less."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.buckets import Bucket, Rule, retry_after_s, take

rules = st.builds(
    Rule,
    rate=st.floats(min_value=0.01, max_value=10_000, allow_nan=False, allow_infinity=False),
    burst=st.integers(min_value=1, max_value=1_000),
)
#: gaps between requests, in milliseconds (0: at once)
gaps = st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=300)


def run(rule: Rule, gaps_ms: list[int], start_ms: int = 1_000_000) -> list[tuple[int, bool, Bucket, int]]:
    bucket: Bucket | None = None
    now = start_ms
    seen = []
    for gap in gaps_ms:
        now += gap
        outcome = take(bucket, rule, now)
        bucket = outcome.bucket
        seen.append((now, outcome.allowed, bucket, outcome.retry_after_ms))
    return seen


def test_a_new_bucket_allows_its_burst_at_once_and_then_refuses() -> None:
    seen = run(Rule(rate=1, burst=5), [0] * 7)
    assert [allowed for _, allowed, _, _ in seen] == [True] * 5 + [False] * 2
    assert seen[-1][3] == 1000  # one token a second: the next in a second


def test_the_rate_refills_it() -> None:
    rule = Rule(rate=10, burst=1)
    seen = run(rule, [0, 0, 50, 50, 100])
    assert [allowed for _, allowed, _, _ in seen] == [True, False, False, True, True]


@given(rules, gaps)
def test_tokens_stay_between_zero_and_the_burst(rule: Rule, gaps_ms: list[int]) -> None:
    for _, _, bucket, _ in run(rule, gaps_ms):
        assert 0 <= bucket.tokens <= rule.burst


@given(rules, gaps)
def test_no_more_are_allowed_than_the_burst_and_the_rate_allow(rule: Rule, gaps_ms: list[int]) -> None:
    seen = run(rule, gaps_ms)
    elapsed_s = (seen[-1][0] - seen[0][0]) / 1000
    allowed = sum(1 for _, ok, _, _ in seen if ok)
    assert allowed <= rule.burst + rule.rate * elapsed_s + 1e-6


@given(rules, st.integers(min_value=1, max_value=300))
def test_requests_no_faster_than_the_rate_are_never_refused(rule: Rule, count: int) -> None:
    gap_ms = int(1000 / rule.rate) + 1
    assert all(ok for _, ok, _, _ in run(rule, [gap_ms] * count))


@given(rules, gaps)
def test_a_refused_caller_that_waits_as_told_is_served(rule: Rule, gaps_ms: list[int]) -> None:
    for now, allowed, bucket, retry_after_ms in run(rule, gaps_ms):
        if not allowed:
            assert retry_after_ms >= 1
            assert take(bucket, rule, now + retry_after_ms).allowed
            assert take(bucket, rule, now + retry_after_s(retry_after_ms) * 1000).allowed


@given(rules, gaps, st.integers(min_value=1, max_value=5))
def test_asking_takes_nothing_and_giving_back_never_overfills(
    rule: Rule, gaps_ms: list[int], back: int
) -> None:
    for now, _, bucket, _ in run(rule, gaps_ms):
        asked = take(bucket, rule, now, cost=0)
        assert asked.allowed == (take(bucket, rule, now).allowed)
        assert asked.bucket == take(bucket, rule, now, cost=0).bucket
        assert asked.bucket.tokens == min(rule.burst, bucket.tokens)
        given_back = take(bucket, rule, now, cost=-back)
        assert given_back.allowed and given_back.bucket.tokens <= rule.burst


def test_a_clock_that_goes_back_adds_nothing() -> None:
    rule = Rule(rate=1000, burst=10)
    bucket = Bucket(tokens=0.0, at_ms=5_000)
    outcome = take(bucket, rule, 4_000)
    assert not outcome.allowed and outcome.bucket == Bucket(0.0, 5_000)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0), (float("inf"), 1), (float("nan"), 1)])
def test_rules_that_cannot_work_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Rule(rate=rate, burst=burst)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after_s(ms) for ms in (1, 999, 1000, 1001, 2500)] == [1, 1, 1, 2, 3]


def test_a_wait_that_refills_a_rounding_error_short_of_a_token_is_served() -> None:
    """Found by the property above: 0.02672 tokens and 97,328 ms at 0.01/s sum to 0.9999999999999999."""
    rule = Rule(rate=0.01, burst=1)
    refused = take(Bucket(tokens=0.02672, at_ms=1_002_672), rule, 1_002_672)
    assert not refused.allowed
    assert take(refused.bucket, rule, 1_002_672 + refused.retry_after_ms).allowed
