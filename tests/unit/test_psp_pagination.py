"""Created-ordered indexes page newest first, with Stripe's cursors and created filters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from psp.emulator.pagination import CreatedRange, OrderedIndex, PageRequest


def _index(created: list[int]) -> OrderedIndex:
    index = OrderedIndex()
    for seq, c in enumerate(created):
        index.add(f"o{seq}", (c, seq))
    return index


def test_newest_first_with_has_more() -> None:
    index = _index([10, 20, 30, 40, 50])
    assert index.page(PageRequest(limit=2)) == (["o4", "o3"], True)
    assert index.page(PageRequest(limit=5)) == (["o4", "o3", "o2", "o1", "o0"], False)


def test_starting_after_and_ending_before() -> None:
    index = _index([10, 20, 30, 40, 50])
    assert index.page(PageRequest(limit=2, starting_after=(40, 3))) == (["o2", "o1"], True)
    assert index.page(PageRequest(limit=2, starting_after=(20, 1))) == (["o0"], False)
    assert index.page(PageRequest(limit=2, ending_before=(20, 1))) == (["o3", "o2"], True)
    assert index.page(PageRequest(limit=2, ending_before=(40, 3))) == (["o4"], False)


def test_created_bounds_combine() -> None:
    index = _index([10, 20, 30, 40, 50])
    assert index.page(PageRequest(limit=10, created=CreatedRange(gte=20, lt=50)))[0] == ["o3", "o2", "o1"]
    assert index.page(PageRequest(limit=10, created=CreatedRange(gt=20, lte=50)))[0] == ["o4", "o3", "o2"]


def test_out_of_order_inserts_and_discard() -> None:
    index = _index([30, 10, 20])
    assert index.page(PageRequest(limit=10))[0] == ["o0", "o2", "o1"]
    index.discard("o2")
    assert index.page(PageRequest(limit=10))[0] == ["o0", "o1"]
    assert "o2" not in index and len(index) == 2


def test_filter_predicate_and_has_more() -> None:
    index = _index([1, 2, 3, 4, 5, 6])
    keep = {"o1", "o3", "o5"}.__contains__
    assert index.page(PageRequest(limit=2), keep) == (["o5", "o3"], True)
    assert index.page(PageRequest(limit=3), keep) == (["o5", "o3", "o1"], False)


@given(
    st.lists(st.integers(min_value=0, max_value=20), max_size=40),
    st.integers(min_value=1, max_value=7),
    st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
)
def test_walking_all_pages_matches_a_sort(
    created: list[int], limit: int, gte: int | None, lt: int | None
) -> None:
    index = _index(created)
    window = CreatedRange(gte=gte, lt=lt)
    expected = [
        f"o{seq}"
        for c, seq in sorted(((c, s) for s, c in enumerate(created)), reverse=True)
        if window.contains(c)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        ids, has_more = index.page(PageRequest(limit=limit, starting_after=cursor, created=window))
        seen += ids
        if not has_more:
            break
        cursor = index.key_of(ids[-1])
    assert seen == expected
    low, high = gte if gte is not None else 0, lt if lt is not None else 21
    assert index.ids_between(low, high) == list(reversed(expected))
