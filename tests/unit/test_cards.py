"""Spotting raw card numbers: the Luhn check, and PANs hidden in token-shaped strings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from payray.cards import contains_card_number, luhn_valid


def check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass Luhn, computed the long way for the property tests."""
    for digit in "0123456789":
        if sum(_luhn_terms(payload + digit)) % 10 == 0:
            return digit
    raise AssertionError("unreachable")


def _luhn_terms(digits: str) -> list[int]:
    terms = []
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        terms.append(value - 9 if value > 9 else value)
    return terms


def test_known_numbers() -> None:
    assert luhn_valid("4242424242424242") and luhn_valid("79927398713") and luhn_valid("4000056655665556")
    assert not luhn_valid("4242424242424241") and not luhn_valid("") and not luhn_valid("42a2")
    assert not luhn_valid("٤٢٤٢")  # digits of another script are not a card number


@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_exactly_one_check_digit_completes_a_number(payload: str) -> None:
    valid = [d for d in "0123456789" if luhn_valid(payload + d)]
    assert valid == [check_digit(payload)]


@given(st.text(alphabet="0123456789", min_size=1, max_size=30), st.integers(0, 29))
def test_a_single_changed_digit_breaks_the_check(number: str, at: int) -> None:
    if not luhn_valid(number):
        return
    at %= len(number)
    changed = number[:at] + str((int(number[at]) + 1) % 10) + number[at + 1 :]
    assert not luhn_valid(changed)


@given(st.text(alphabet="0123456789", min_size=12, max_size=18), st.sampled_from(["pm_", "tok_", "x ", ""]))
def test_a_pan_is_found_inside_any_string(payload: str, prefix: str) -> None:
    pan = payload + check_digit(payload)
    assert contains_card_number(prefix + pan)
    assert contains_card_number(f"{prefix}{pan[:4]} {pan[4:8]}-{pan[8:]}")


def test_what_is_not_a_card_number() -> None:
    assert not contains_card_number("pm_card_visa")
    assert not contains_card_number("pm_4242424242424241")  # fails Luhn
    assert not contains_card_number("order 42424242424242424242")  # 20 digits: too long for a PAN
    assert not contains_card_number("424242424242")  # 12 digits: too short
    assert not contains_card_number("4242  4242 4242 4242")  # two spaces split the run
