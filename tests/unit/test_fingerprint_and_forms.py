"""Request fingerprints and Stripe-style form decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stripe._encode import _api_encode

from payray.fingerprint import request_fingerprint
from payray.forms import FormDecodeError, decode_form


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    a = request_fingerprint("POST", "/v1/charges", {"amount": 1, "currency": "usd"})
    b = request_fingerprint("post", "/v1/charges", {"currency": "usd", "amount": 1})
    assert a == b
    assert a != request_fingerprint("POST", "/v1/charges", {"amount": 2, "currency": "usd"})
    assert a != request_fingerprint("POST", "/v1/refunds", {"amount": 1, "currency": "usd"})
    assert a != request_fingerprint("POST", "/v1/charges", {"amount": "1", "currency": "usd"})


def test_decode_nested_and_indexed() -> None:
    decoded = decode_form("amount=100&metadata[order]=42&expand[0]=a&expand[1]=b&tags[]=x&tags[]=y")
    assert decoded == {"amount": "100", "metadata": {"order": "42"}, "expand": ["a", "b"], "tags": ["x", "y"]}


@pytest.mark.parametrize("body", ["a[=1", "[x]=1", "a=1&a=2", "a=1&a[b]=2", "a[b]c=1"])
def test_malformed_forms_are_refused(body: str) -> None:
    with pytest.raises(FormDecodeError):
        decode_form(body)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_key = st.from_regex(r"[a-z_]{1,10}", fullmatch=True)


@given(
    st.dictionaries(
        _key,
        st.one_of(
            _text,
            st.dictionaries(_key, _text, min_size=1, max_size=4),
            st.lists(_text, min_size=1, max_size=4),
        ),
        max_size=6,
    )
)
def test_decode_inverts_stripes_own_encoder(params: dict[str, object]) -> None:
    from urllib.parse import urlencode

    encoded = urlencode(list(_api_encode(params)))
    assert decode_form(encoded) == params
