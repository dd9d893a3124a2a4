"""A customer update changes only what it sends; an empty value clears, metadata merges key by key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from payray.errors import InvalidRequest
from serve_app.flows.customers import updated
from serve_app.stores.customers import Customer
from serve_app.wire.schemas import CustomerCreate, CustomerUpdate

BEFORE = Customer(
    id="cus_1", merchant_id="acct_1", created_at=datetime(2026, 1, 1, tzinfo=UTC),
    email="a@example.com", name="Ada", phone="+15550100", metadata={"tier": "gold", "ref": "x"},
)  # fmt: skip


def test_only_the_fields_sent_change() -> None:
    after = updated(BEFORE, CustomerUpdate.model_validate({"name": "Ada L."}))
    assert after == Customer(**{**BEFORE.__dict__, "name": "Ada L."})


def test_an_empty_value_clears_a_field_and_a_metadata_key() -> None:
    after = updated(BEFORE, CustomerUpdate.model_validate({"email": "", "metadata": {"ref": "", "new": "1"}}))
    assert after.email is None and after.name == "Ada"
    assert after.metadata == {"tier": "gold", "new": "1"}


def test_empty_metadata_clears_all_of_it() -> None:
    assert updated(BEFORE, CustomerUpdate.model_validate({"metadata": ""})).metadata == {}


def test_more_than_fifty_keys_after_the_merge_is_refused() -> None:
    many = {f"k{i}": "v" for i in range(49)}
    with pytest.raises(InvalidRequest) as refused:
        updated(BEFORE, CustomerUpdate.model_validate({"metadata": many}))
    assert refused.value.param == "metadata"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a" * 510 + "@x.io"},
        {"name": "n" * 257},
        {"phone": "1" * 21},
        {"email": 5},
        {"metadata": {"k" * 41: "v"}},
        {"shipping": "x"},
    ],
)
def test_bad_fields_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CustomerCreate.model_validate(body)


def test_a_malformed_email_is_email_invalid() -> None:
    with pytest.raises(InvalidRequest) as refused:
        CustomerCreate.model_validate({"email": "not-an-email"})
    assert (refused.value.code, refused.value.param) == ("email_invalid", "email")
    assert "not-an-email" not in refused.value.message
