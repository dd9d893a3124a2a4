"""The events list's query: Stripe's type patterns and created bounds become the store's filter; anything
else is a 400 naming the parameter."""

from __future__ import annotations

import pytest

from payray.errors import InvalidRequest
from serve_app.stores.events import EventFilter
from serve_app.wire.merchant_events import event_filter


def test_no_filter_is_everything() -> None:
    assert event_filter([("limit", "3"), ("starting_after", "evt_1")]) == EventFilter()


def test_a_type_is_a_like_pattern_with_star_for_any_part() -> None:
    assert event_filter([("type", "charge.succeeded")]).types == [r"charge.succeeded"]
    assert event_filter([("type", "charge.dispute.*")]).types == ["charge.dispute.%"]
    assert event_filter([("type", "charge.dispute.funds_withdrawn")]).types == [
        r"charge.dispute.funds\_withdrawn"
    ]


def test_types_come_as_stripe_sdks_send_them() -> None:
    sent = [("types[0]", "charge.succeeded"), ("types[1]", "refund.*"), ("types[]", "payout.created")]
    assert event_filter(sent).types == ["charge.succeeded", "refund.%", "payout.created"]


def test_created_is_exact_or_bounded() -> None:
    assert event_filter([("created", "100")]).created == {"gte": 100, "lte": 100}
    bounds = [("created[gt]", "1"), ("created[lte]", "9")]
    assert event_filter(bounds).created == {"gt": 1, "lte": 9}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ([("type", "charge.%")], "type"),
        ([("type", "Charge")], "type"),
        ([("type", "")], "type"),
        ([("types[0]", "charge..x")], "types"),
        ([("type", "charge.failed"), ("types[0]", "charge.succeeded")], "types"),
        ([(f"types[{i}]", "charge.failed") for i in range(21)], "types"),
        ([("created", "1.5")], "created"),
        ([("created[eq]", "1")], "created[eq]"),
        ([("created[gt]", "9" * 13)], "created[gt]"),
        ([("ending_before", "evt_1")], "ending_before"),
        ([("expand[]", "data")], "expand[]"),
    ],
)
def test_a_bad_or_unknown_parameter_is_refused_by_name(params: list[tuple[str, str]], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        event_filter(params)
    assert refused.value.param == param
