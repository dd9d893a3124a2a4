"""Stripe's metadata updates: set a key, remove one with an empty value, empty them all with ``""``."""

from __future__ import annotations

import pytest

from payray.errors import InvalidRequest
from payray.metadata import MAX_KEYS, merged_metadata
from serve_app.edge.bodies import parse_body
from serve_app.wire.schemas import ChargeUpdate, RefundUpdate

FORM = "application/x-www-form-urlencoded"


def test_keys_are_set_and_removed_and_the_rest_kept() -> None:
    current = {"order": "1", "sku": "a", "gift": "yes"}
    assert merged_metadata(current, {"order": "2", "gift": "", "new": "x"}) == {
        "order": "2",
        "sku": "a",
        "new": "x",
    }
    assert merged_metadata(current, None) == current
    assert merged_metadata(current, "") == {}
    assert merged_metadata(current, {"absent": ""}) == current


def test_the_result_keeps_the_key_limit() -> None:
    current = {f"k{i}": "v" for i in range(MAX_KEYS)}
    with pytest.raises(InvalidRequest) as refused:
        merged_metadata(current, {"one_more": "v"})
    assert refused.value.param == "metadata"
    assert len(merged_metadata(current, {"k0": "", "one_more": "v"})) == MAX_KEYS


def test_update_bodies_as_stripes_sdks_send_them() -> None:
    change = parse_body(ChargeUpdate, b"metadata[a]=1&metadata[b]=&description=x", FORM)
    assert change.metadata == {"a": "1", "b": ""} and change.description == "x"
    assert parse_body(ChargeUpdate, b"metadata=", FORM).metadata == ""
    assert parse_body(RefundUpdate, b"", FORM).metadata is None


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"amount=5", "amount"),
        (b"metadata=x", "metadata"),
        (b"metadata[a][b]=1", "metadata"),
        (b"metadata[" + b"k" * 41 + b"]=1", "metadata"),
        (b"description=" + b"d" * 1001, "description"),
        (b"currency=usd", "currency"),
    ],
)
def test_what_an_update_may_not_change_is_refused_by_name(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_body(ChargeUpdate, raw, FORM)
    assert refused.value.param == param
