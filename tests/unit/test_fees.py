"""The refund terms: what a refund returns, and how much of the capture fee comes back with it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.fees import (
    NothingLeftToRefund,
    RefundRefused,
    RefundTooLarge,
    fee_for,
    refund_fee_share,
    refund_terms,
)
from payray.money import CURRENCY_EXPONENTS, MAX_CHARGE_AMOUNT, Money

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
charges = st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT)
bps = st.integers(min_value=0, max_value=20_000)
cuts = st.lists(st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT), min_size=1, max_size=8)


def split(amount: int, sizes: list[int]) -> list[int]:
    """``amount`` cut into parts of the given sizes (the last part takes what is left): they sum to it."""
    parts, left = [], amount
    for size in sizes:
        if left == 0:
            break
        parts.append(min(left, size))
        left -= parts[-1]
    return [*parts, left] if left else parts


@given(charges, currencies, bps, cuts)
def test_partial_refunds_give_back_exactly_the_capture_fee_once_the_charge_is_refunded(
    amount: int, currency: str, fee_bps: int, sizes: list[int]
) -> None:
    charged = Money(amount, currency)
    fee = fee_for(charged, fee_bps)
    refunded, returned = 0, Money.zero(currency)
    for part in split(amount, sizes):
        terms = refund_terms(charged, fee, refunded, part)
        assert terms.amount == Money(part, currency)
        assert Money.zero(currency) <= terms.fee_returned <= terms.amount  # the merchant never gains
        refunded += part
        returned += terms.fee_returned
        assert returned <= fee  # never more than the capture took
    assert returned == fee


@given(charges, currencies, bps, st.integers(min_value=0, max_value=MAX_CHARGE_AMOUNT))
def test_a_refund_of_what_is_left_finishes_the_charge(
    amount: int, currency: str, fee_bps: int, before: int
) -> None:
    refunded_before = min(before, amount - 1)
    charged = Money(amount, currency)
    fee = fee_for(charged, fee_bps)
    terms = refund_terms(charged, fee, refunded_before, None)
    assert terms.amount == Money(amount - refunded_before, currency)
    earlier = refund_fee_share(fee, amount, 0, refunded_before) if refunded_before else Money.zero(currency)
    assert earlier + terms.fee_returned == fee


@given(charges, currencies, bps, st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT))
def test_more_than_is_left_is_refused_or_capped(amount: int, currency: str, fee_bps: int, extra: int) -> None:
    charged = Money(amount, currency)
    fee = fee_for(charged, fee_bps)
    with pytest.raises(RefundTooLarge) as refused:
        refund_terms(charged, fee, 0, amount + extra)
    assert (refused.value.requested, refused.value.refundable) == (amount + extra, amount)
    assert refund_terms(charged, fee, 0, amount + extra, capped=True) == refund_terms(charged, fee, 0, amount)


def test_examples_and_refusals() -> None:
    charged, fee = Money(1000, "usd"), Money(29, "usd")
    assert refund_terms(charged, fee, 0, 500).fee_returned == Money(14, "usd")
    assert refund_terms(charged, fee, 500, 500).fee_returned == Money(15, "usd")
    assert refund_terms(charged, fee, 600, None).amount == Money(400, "usd")
    with pytest.raises(NothingLeftToRefund):
        refund_terms(charged, fee, 1000, None)
    with pytest.raises(NothingLeftToRefund):
        refund_terms(charged, fee, 1000, 1, capped=True)
    with pytest.raises(RefundRefused):
        refund_terms(charged, fee, 0, 0)
    with pytest.raises(RefundTooLarge):
        refund_terms(charged, fee, 600, 401)
