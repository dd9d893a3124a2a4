"""Strict validation of charge bodies, JSON or form; a wrong type is refused, never coerced."""

from __future__ import annotations

import pytest

from payray.errors import InvalidRequest, PayloadTooLarge
from serve_app.edge.bodies import parse_body
from serve_app.wire.schemas import ChargeCreate, PayoutCreate, RefundCreate

FORM = "application/x-www-form-urlencoded"


def test_form_integers_are_decimal_strings() -> None:
    body = parse_body(ChargeCreate, b"amount=100&currency=usd&payment_method=pm_card_visa", FORM)
    assert body.amount == 100


def test_optional_integers_come_from_a_form_too() -> None:
    """The refund's amount may be left out, and a payout's is required; both arrive as decimal strings."""
    refund = parse_body(RefundCreate, b"charge=ch_abc&amount=300&reason=duplicate", FORM)
    assert refund.amount == 300 and refund.reason == "duplicate"
    assert parse_body(RefundCreate, b"charge=ch_abc", FORM).amount is None
    assert parse_body(PayoutCreate, b"amount=500&currency=usd", FORM).amount == 500
    with pytest.raises(InvalidRequest):
        parse_body(RefundCreate, b"charge=ch_abc&amount=3e2", FORM)
    with pytest.raises(InvalidRequest):
        parse_body(RefundCreate, b'{"charge": "ch_abc", "amount": "300"}', "application/json")


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"amount=1.5&currency=usd&payment_method=pm_card_visa", "amount", "parameter_invalid"),
        (b"amount=0&currency=usd&payment_method=pm_card_visa", "amount", "parameter_invalid"),
        (
            b"amount=10&currency=usd&payment_method=4000%200000%200000%200002",
            "payment_method",
            "parameter_invalid",
        ),
        (b"amount=10&currency=usd&payment_method=pm_card_visa&cvc=1", "cvc", "parameter_unknown"),
        (b"amount=10&currency=usd", "payment_method", "parameter_missing"),
        (
            b"amount=10&currency=usd&payment_method=pm_card_visa&metadata[k]=" + b"v" * 501,
            "metadata",
            "parameter_invalid",
        ),
    ],
)
def test_form_errors_name_the_field(raw: bytes, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_body(ChargeCreate, raw, FORM)
    assert raised.value.param is not None and raised.value.param.startswith(param)
    assert raised.value.code == code


def test_oversized_body_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_body(ChargeCreate, b"{" + b" " * 70_000 + b"}", "application/json")


def test_json_constants_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_body(ChargeCreate, b'{"amount": Infinity}', "application/json")


def test_form_metadata_with_numeric_keys_stays_metadata() -> None:
    raw = b"amount=100&currency=usd&payment_method=pm_card_visa&metadata[0]=a&metadata[1]=b"
    assert parse_body(ChargeCreate, raw, FORM).metadata == {"0": "a", "1": "b"}


@pytest.mark.parametrize("description", [b"%FF", b"\xff"])
def test_a_form_that_is_not_utf8_is_a_clear_400(description: bytes) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_body(ChargeCreate, b"amount=100&currency=usd&description=" + description, FORM)
    assert refused.value.code == "invalid_form"


def test_a_currency_code_in_any_case_is_kept_lowercase() -> None:
    charge = parse_body(ChargeCreate, b"amount=100&currency=USD&payment_method=pm_card_visa", FORM)
    assert charge.currency == "usd"
    assert parse_body(PayoutCreate, b'{"amount": 5, "currency": "Eur"}', "application/json").currency == "eur"
    with pytest.raises(InvalidRequest) as refused:
        parse_body(PayoutCreate, b"amount=5&currency=XYZ", FORM)
    assert refused.value.param == "currency"
