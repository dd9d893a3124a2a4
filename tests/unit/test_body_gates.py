"""The gates every body passes before validation: depth, parameter count, characters, card data."""

from __future__ import annotations

import json

import pytest

from payray.errors import InvalidRequest
from serve_app.edge.bodies import parse_body
from serve_app.edge.urls import url_problem
from serve_app.wire.limits import MAX_DEPTH, MAX_PARAMS, json_depth_exceeds
from serve_app.wire.schemas import RAW_CARD_DATA_REFUSED, ChargeCreate, MerchantCreate

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
VALID = b"amount=100&currency=usd&payment_method=pm_card_visa"


def refused(raw: bytes, content_type: str = FORM) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        parse_body(ChargeCreate, raw, content_type)
    return raised.value


def test_json_depth_is_measured_without_parsing() -> None:
    assert not json_depth_exceeds(b'{"a": [[1]]}', 3)
    assert json_depth_exceeds(b'{"a": [[1]]}', 2)
    assert not json_depth_exceeds(b'{"a": "[[[[[[\\"[[[[{{{{"}', 1)  # brackets in strings do not count
    assert json_depth_exceeds(b"[" * 30_000 + b"]" * 30_000)


def test_json_nested_30000_deep_is_a_400_not_a_recursion_error() -> None:
    error = refused(b'{"metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", JSON)
    assert "nests deeper" in error.message


def test_json_at_the_depth_limit_reaches_validation() -> None:
    nested = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    body = b'{"amount": 1, "currency": "usd", "payment_method": "pm_card_visa", "metadata": ' + nested + b"}"
    error = refused(body, JSON)
    assert error.param == "metadata" and "nests" not in error.message


def test_form_keys_nested_1500_deep_are_a_400_naming_the_parameter() -> None:
    error = refused(VALID + b"&metadata" + b"[a]" * 1500 + b"=1")
    assert error.param == "metadata" and "nest" in error.message


@pytest.mark.parametrize("content_type", [FORM, JSON])
def test_too_many_parameters_are_refused(content_type: str) -> None:
    if content_type == FORM:
        raw = VALID + b"".join(b"&metadata[k%d]=v" % i for i in range(MAX_PARAMS))
    else:
        raw = json.dumps({"metadata": {f"k{i}": "v" for i in range(MAX_PARAMS)}, "amount": 1}).encode()
    assert "at most" in refused(raw, content_type).message


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (VALID + b"&description=a%00b", "description"),
        (VALID + b"&metadata[k]=%1b", "metadata[k]"),
        (VALID + b"&metadata[k%0A]=v", "metadata"),
        (VALID + b"&customer=%7F", "customer"),
        (VALID + b"&a%00=1", None),
    ],
)
def test_control_characters_are_refused_naming_the_parameter(raw: bytes, param: str | None) -> None:
    error = refused(raw)
    assert error.param == param and error.code == "parameter_invalid"
    assert "\x00" not in error.message and "control character" in error.message


def test_a_lone_surrogate_in_json_is_refused() -> None:
    assert refused(b'{"description": "a\\ud800"}', JSON).param == "description"


def test_free_text_keeps_tab_and_newlines() -> None:
    body = parse_body(ChargeCreate, VALID + b"&description=a%09b%0D%0Ac&metadata[k]=x%0Ay", FORM)
    assert body.description == "a\tb\r\nc" and body.metadata == {"k": "x\ny"}


def test_every_model_is_screened() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_body(MerchantCreate, b'{"name": "shop\\u0000"}', JSON)
    assert raised.value.param == "name"


@pytest.mark.parametrize(
    ("raw", "content_type", "param"),
    [
        (b"amount=100&currency=usd&card[number]=4242424242424242&card[cvc]=123", FORM, "card"),
        (b'{"amount": 100, "card": {"number": "4242424242424242", "cvc": "123"}}', JSON, "card"),
        (b"amount=100&currency=usd&source=4242424242424242", FORM, "source"),
        (b"amount=100&currency=usd&source[number]=4242424242424242", FORM, "source"),
        (b"amount=100&currency=usd&payment_method=pm_4000056655665556", FORM, "payment_method"),
        (b"amount=100&currency=usd&payment_method=4242%204242%204242%204242", FORM, "payment_method"),
        (b"amount=100&currency=usd&payment_method_data[card][number]=4242424242424242", FORM,
         "payment_method_data[card]"),
    ],
)  # fmt: skip
def test_raw_card_data_is_refused_pointing_at_tokens(raw: bytes, content_type: str, param: str) -> None:
    error = refused(raw, content_type)
    assert error.param == param and error.message == RAW_CARD_DATA_REFUSED
    assert "pm_" in error.message and "tok_" in error.message
    assert "4242" not in error.message


def test_a_token_source_is_not_card_data() -> None:
    # with payment_method: one or the other
    error = refused(VALID + b"&source=tok_visa")
    assert error.param == "source" and error.code == "parameter_invalid"


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/v1/charges/ch_\x00", b"", "id"),
        ("/v1/charges", b"starting_after=ch_%00", "starting_after"),
        ("/v1/refunds", b"limit=3&charge=%1B", "charge"),
        ("/v1/refunds", b"a%00=1", None),
    ],
)
def test_urls_with_control_characters_are_faulted(path: str, query: bytes, param: str | None) -> None:
    problem = url_problem(path, query)
    assert problem is not None and problem.param == param and problem.status == 400


def test_ordinary_urls_pass() -> None:
    assert url_problem("/v1/charges/ch_123", b"limit=10&starting_after=ch_9") is None
