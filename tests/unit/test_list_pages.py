"""A list's query as Stripe's lists take it: one cursor, a ``created`` range, nothing unknown."""

from __future__ import annotations

import pytest

from payray.errors import InvalidRequest
from payray.pages import Page, parse_page


def test_the_defaults() -> None:
    assert parse_page([]) == (Page(), {})


def test_created_bounds_become_one_half_open_interval_of_seconds() -> None:
    page, _ = parse_page([("created[gt]", "100"), ("created[lte]", "200")])
    assert (page.created_from, page.created_until) == (101, 201)
    page, _ = parse_page([("created[gte]", "100"), ("created[lt]", "200")])
    assert (page.created_from, page.created_until) == (100, 200)
    page, _ = parse_page([("created", "150"), ("created[gte]", "100")])
    assert (page.created_from, page.created_until) == (150, 151)


@pytest.mark.parametrize(
    ("pairs", "param"),
    [
        ([("created[gte]", "yesterday")], "created[gte]"),
        ([("created[lt]", "-1")], "created[lt]"),
        ([("created", "1.5")], "created"),
        ([("created[eq]", "1")], "created[eq]"),
        ([("customer", "cus_1")], "customer"),
        ([("limit", "0")], "limit"),
        ([("limit", "5"), ("limit", "6")], "limit"),
        ([("starting_after", "ch_1"), ("ending_before", "ch_2")], "ending_before"),
        ([("created", "99999999999999")], "created"),
    ],
)
def test_a_bad_or_unknown_parameter_is_refused_by_name(pairs: list[tuple[str, str]], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_page(pairs)
    assert refused.value.param == param


def test_a_lists_own_filters_are_known_and_returned() -> None:
    page, own = parse_page([("charge", "ch_1"), ("ending_before", "re_9")], frozenset({"charge"}))
    assert own == {"charge": "ch_1"} and page.backwards and page.cursor == ("ending_before", "re_9")


def test_lists_without_stripes_refuse_ending_before_and_created() -> None:
    for name in ("ending_before", "created[gte]"):
        with pytest.raises(InvalidRequest) as refused:
            parse_page([(name, "1")], stripes=False)
        assert refused.value.code == "parameter_unknown" and refused.value.param == name


def test_trim_drops_the_row_farthest_from_the_cursor() -> None:
    assert Page(limit=2).trim([5, 4, 3]) == ([5, 4], True)
    assert Page(limit=2, ending_before="x").trim([5, 4, 3]) == ([4, 3], True)
    assert Page(limit=3, ending_before="x").trim([5, 4, 3]) == ([5, 4, 3], False)
