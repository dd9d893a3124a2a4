"""Money: integer minor units, one currency per value, exact splitting and rounding."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payray.money import CURRENCY_EXPONENTS, CurrencyMismatch, Money, UnknownCurrency

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
amounts = st.integers(min_value=-(10**15), max_value=10**15)


@st.composite
def same_currency(draw: st.DrawFn, n: int) -> list[Money]:
    currency = draw(currencies)
    return [Money(draw(amounts), currency) for _ in range(n)]


@given(same_currency(3))
def test_addition_is_associative_and_commutative(values: list[Money]) -> None:
    a, b, c = values
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a


@given(same_currency(2))
def test_subtraction_undoes_addition(values: list[Money]) -> None:
    a, b = values
    assert (a + b) - b == a
    assert a - a == Money.zero(a.currency)
    assert a.__neg__().__neg__() == a


@given(amounts, amounts, currencies, currencies)
def test_mixed_currencies_never_combine(x: int, y: int, c1: str, c2: str) -> None:
    if c1 == c2:
        return
    a, b = Money(x, c1), Money(y, c2)
    for operation in (
        lambda: a + b,
        lambda: a - b,
        lambda: a < b,
        lambda: a <= b,
        lambda: a > b,
        lambda: a >= b,
    ):
        with pytest.raises(CurrencyMismatch):
            operation()


@given(amounts, currencies, st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=12))
def test_allocate_loses_no_minor_unit(amount: int, currency: str, ratios: list[int]) -> None:
    if sum(ratios) == 0:
        with pytest.raises(ValueError):
            Money(amount, currency).allocate(ratios)
        return
    parts = Money(amount, currency).allocate(ratios)
    assert len(parts) == len(ratios)
    assert sum(p.amount for p in parts) == amount
    assert all(p.currency == currency for p in parts)


@given(amounts, currencies, st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=12))
def test_allocate_keeps_each_part_within_one_unit_of_its_exact_share(
    amount: int, currency: str, ratios: list[int]
) -> None:
    parts = Money(amount, currency).allocate(ratios)
    total = sum(ratios)
    for part, ratio in zip(parts, ratios, strict=True):
        assert abs(Fraction(part.amount) - Fraction(amount * ratio, total)) <= 1


def test_allocate_gives_nothing_to_a_zero_ratio() -> None:
    parts = Money(1, "usd").allocate([0, 1, 1])
    assert parts[0] == Money(0, "usd")
    assert sum(p.amount for p in parts) == 1


@given(amounts, currencies, st.integers(min_value=0, max_value=100_000))
def test_fraction_bps_rounds_half_away_from_zero(amount: int, currency: str, bps: int) -> None:
    exact = Decimal(amount) * bps / Decimal(10_000)
    expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))  # ROUND_HALF_UP is away from zero
    assert Money(amount, currency).fraction_bps(bps) == Money(expected, currency)
    assert Money(-amount, currency).fraction_bps(bps) == -Money(amount, currency).fraction_bps(bps)


def test_fraction_bps_examples() -> None:
    assert Money(1000, "usd").fraction_bps(290) == Money(29, "usd")
    assert Money(50, "usd").fraction_bps(1000) == Money(5, "usd")
    assert Money(5, "usd").fraction_bps(1000) == Money(1, "usd")  # 0.5 rounds up
    assert Money(4, "usd").fraction_bps(1000) == Money(0, "usd")  # 0.4 rounds down
    assert Money(-5, "usd").fraction_bps(1000) == Money(-1, "usd")
    assert Money(1234, "jpy").fraction_bps(10_000) == Money(1234, "jpy")


@pytest.mark.parametrize("amount", [1.5, 10.0, "10", True, Decimal("1")])
def test_money_refuses_anything_but_int_minor_units(amount: object) -> None:
    with pytest.raises(TypeError):
        Money(amount, "usd")  # type: ignore[arg-type]


def test_money_refuses_unknown_currencies() -> None:
    with pytest.raises(UnknownCurrency):
        Money(100, "xyz")
    with pytest.raises(UnknownCurrency):
        Money(100, "USD")


def test_display_uses_the_currency_exponent() -> None:
    assert str(Money(1050, "usd")) == "10.50 USD"
    assert str(Money(1050, "jpy")) == "1050 JPY"
    assert str(Money(1050, "kwd")) == "1.050 KWD"
    assert Money(-1, "eur").to_decimal() == Decimal("-0.01")
