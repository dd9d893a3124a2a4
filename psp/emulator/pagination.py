"""Created-ordered indexes that answer a list page in O(log n + page), however large the store grows.

Keys are ``(created, seq)``: ``seq`` breaks ties between objects created in the same second (or under a
frozen clock), so the order is total and stable across restarts.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[int, int]


@dataclass(frozen=True)
class CreatedRange:
    """Stripe's ``created[gt|gte|lt|lte]`` filter; any combination of bounds."""

    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    def contains(self, created: int) -> bool:
        return (
            (self.gt is None or created > self.gt)
            and (self.gte is None or created >= self.gte)
            and (self.lt is None or created < self.lt)
            and (self.lte is None or created <= self.lte)
        )


@dataclass(frozen=True)
class PageRequest:
    limit: int = 10
    starting_after: Key | None = None
    ending_before: Key | None = None
    created: CreatedRange | None = None


class OrderedIndex:
    """Ids kept sorted by (created, seq); appends are O(1) because ids almost always arrive in order."""

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._ids: list[str] = []
        self._key_of: dict[str, Key] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._key_of

    def key_of(self, obj_id: str) -> Key | None:
        return self._key_of.get(obj_id)

    def add(self, obj_id: str, key: Key) -> None:
        if obj_id in self._key_of:
            return
        if not self._keys or key >= self._keys[-1]:
            self._keys.append(key)
            self._ids.append(obj_id)
        else:
            i = bisect_right(self._keys, key)
            self._keys.insert(i, key)
            self._ids.insert(i, obj_id)
        self._key_of[obj_id] = key

    def discard(self, obj_id: str) -> None:
        key = self._key_of.pop(obj_id, None)
        if key is None:
            return
        i = bisect_left(self._keys, key)
        del self._keys[i]
        del self._ids[i]

    def _bounds(self, page: PageRequest) -> tuple[int, int]:
        lo, hi = 0, len(self._keys)
        c = page.created
        if c is not None:
            if c.gte is not None:
                lo = max(lo, bisect_left(self._keys, (c.gte, -1)))
            if c.gt is not None:
                lo = max(lo, bisect_left(self._keys, (c.gt + 1, -1)))
            if c.lte is not None:
                hi = min(hi, bisect_left(self._keys, (c.lte + 1, -1)))
            if c.lt is not None:
                hi = min(hi, bisect_left(self._keys, (c.lt, -1)))
        if page.starting_after is not None:
            hi = min(hi, bisect_left(self._keys, page.starting_after))
        if page.ending_before is not None:
            lo = max(lo, bisect_right(self._keys, page.ending_before))
        return lo, hi

    def page(self, page: PageRequest, keep: Callable[[str], bool] | None = None) -> tuple[list[str], bool]:
        """Newest first; ``ending_before`` pages towards newer objects, as Stripe does."""
        lo, hi = self._bounds(page)
        found: list[str] = []
        has_more = False
        positions = range(lo, hi) if page.ending_before is not None else range(hi - 1, lo - 1, -1)
        for i in positions:
            obj_id = self._ids[i]
            if keep is not None and not keep(obj_id):
                continue
            if len(found) == page.limit:
                has_more = True
                break
            found.append(obj_id)
        if page.ending_before is not None:
            found.reverse()
        return found, has_more

    def ids_between(self, start: int, end: int) -> list[str]:
        """Ids created in ``[start, end)``, oldest first (day windows for settlement)."""
        lo = bisect_left(self._keys, (start, -1))
        hi = bisect_left(self._keys, (end, -1))
        return self._ids[lo:hi]
