"""The events list's query: Stripe's type patterns become the store's filter, the cursors and created bounds
the page every list takes; anything else is a 400 naming the parameter."""

from __future__ import annotations

import pytest

from payray.errors import InvalidRequest
from payray.pages import Page
from serve_app.stores.events import EventFilter
from serve_app.wire.merchant_events import event_filter, event_query


def test_no_filter_is_everything() -> None:
    assert event_query([("limit", "3"), ("starting_after", "evt_1")]) == (
        Page(limit=3, starting_after="evt_1"),
        EventFilter(),
    )


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
    page, _ = event_query([("created", "100")])
    assert (page.created_from, page.created_until) == (100, 101)
    page, _ = event_query([("created[gt]", "1"), ("created[lte]", "9")])
    assert (page.created_from, page.created_until) == (2, 10)


def test_ending_before_pages_backwards_and_combines_with_the_filters() -> None:
    page, only = event_query([("ending_before", "evt_9"), ("types[0]", "charge.*"), ("created[gte]", "5")])
    assert page.backwards and page.cursor == ("ending_before", "evt_9") and page.created_from == 5
    assert only == EventFilter(types=["charge.%"])


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
        ([("ending_before", "evt_1"), ("starting_after", "evt_2")], "ending_before"),
        ([("limit", "1"), ("limit", "2")], "limit"),
        ([("expand[]", "data")], "expand[]"),
    ],
)
def test_a_bad_or_unknown_parameter_is_refused_by_name(params: list[tuple[str, str]], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        event_query(params)
    assert refused.value.param == param
