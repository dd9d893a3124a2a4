"""The bracket-notation form decoder of the API and the PSP emulator, checked against the SDK's encoder."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stripe._encode import _api_encode

from payray.forms import FormDecodeError as FormError
from payray.forms import decode_form, decode_pairs, split_key


def stripe_encode(params: dict[str, Any]) -> str:
    return urlencode(list(_api_encode(params)))


def test_split_key_handles_nesting_and_append() -> None:
    assert split_key("amount") == ["amount"]
    assert split_key("metadata[order]") == ["metadata", "order"]
    assert split_key("items[0][price]") == ["items", "0", "price"]
    assert split_key("expand[]") == ["expand", ""]


@pytest.mark.parametrize("bad", ["[x]", "a[b", "a]b[", "a[b]c", "a[b][c"])
def test_split_key_rejects_malformed_keys(bad: str) -> None:
    with pytest.raises(FormError):
        split_key(bad)


def test_decodes_nested_dicts_and_indexed_lists() -> None:
    body = "amount=1000&metadata[order]=42&expand[0]=latest_charge&expand[1]=customer&card[number]=4242"
    assert decode_form(body) == {
        "amount": "1000",
        "metadata": {"order": "42"},
        "expand": ["latest_charge", "customer"],
        "card": {"number": "4242"},
    }


def test_empty_brackets_append_to_a_list() -> None:
    assert decode_form("expand[]=a&expand[]=b") == {"expand": ["a", "b"]}


def test_parameters_named_by_digits_stay_parameters() -> None:
    """The top level is the parameters: ``0=null`` is a parameter ``0`` (a 400 unknown, not a crash)."""
    assert decode_form("0=null") == {"0": "null"}
    assert decode_form("0=a&1=b") == {"0": "a", "1": "b"}


def test_metadata_with_numeric_keys_stays_a_dict() -> None:
    assert decode_form("metadata[0]=a&metadata[1]=b") == {"metadata": {"0": "a", "1": "b"}}


def test_sparse_numeric_keys_stay_a_dict() -> None:
    assert decode_form("x[0]=a&x[2]=b") == {"x": {"0": "a", "2": "b"}}


def test_blank_values_are_kept_to_unset_metadata() -> None:
    assert decode_form("metadata[k]=") == {"metadata": {"k": ""}}


def test_bytes_and_percent_encoding() -> None:
    assert decode_form(b"description=caf%C3%A9+au+lait&q=metadata%5B%27k%27%5D%3A%27v%27") == {
        "description": "café au lait",
        "q": "metadata['k']:'v'",
    }


@pytest.mark.parametrize("pairs", [[("a", "1"), ("a", "2")], [("a", "1"), ("a[b]", "2")]])
def test_conflicting_keys_are_rejected(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(FormError):
        decode_pairs(pairs)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(FormError):
        decode_form(b"a=%FF")


#: never ``metadata``, at any depth: its values are kept as a map of strings, never turned into a list
_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda k: k != "metadata"
)
_scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
)
_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4),
        st.dictionaries(_keys, children, min_size=1, max_size=4),
    ),
    max_leaves=12,
)


def _as_wire(value: Any, raw_scalars: bool = False) -> Any:
    """What survives a form: every scalar becomes a string.

    The SDK spells booleans ``true``/``false``, except as direct items of a list, where it sends
    ``str(value)``; a list nested in a list is re-encoded as a dict, so its items get the lowercase spelling.
    """
    if isinstance(value, bool) and not raw_scalars:
        return "true" if value else "false"
    if isinstance(value, dict):
        return {k: _as_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_wire(v, raw_scalars=not raw_scalars) for v in value]
    return str(value)


def _has_empty_container(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or any(_has_empty_container(v) for v in value.values())
    if isinstance(value, list):
        return not value or any(_has_empty_container(v) for v in value)
    return False


@given(st.dictionaries(_keys, _values, max_size=6))
def test_round_trip_through_the_stripe_sdk_encoder(params: dict[str, Any]) -> None:
    if _has_empty_container(params):
        return
    assert decode_form(stripe_encode(params)) == _as_wire(params)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=40).filter(lambda k: "[" not in k and "]" not in k),
        st.text(min_size=1, max_size=50),
        max_size=8,
    )
)
def test_metadata_round_trips_with_any_keys(metadata: dict[str, str]) -> None:
    decoded = decode_form(stripe_encode({"metadata": metadata}))
    assert decoded.get("metadata", {}) == metadata


def test_a_top_level_name_of_digits_stays_a_parameter() -> None:
    assert decode_pairs([("0", "x")]) == {"0": "x"}
    assert decode_pairs([("0", "x"), ("1", "y")]) == {"0": "x", "1": "y"}
