"""What a list request asks for, as Stripe's lists take it: a page size, one cursor, a ``created`` range.

``starting_after`` pages towards older objects, ``ending_before`` towards newer ones; both answer newest
first. ``created`` is an exact second or a range (``created[gt|gte|lt|lte]``), turned here into one
half-open interval of whole seconds, so the store compares timestamps and never rounds them. Any parameter
the list does not know is refused, naming it, as Stripe does: a filter silently ignored is a wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from payray.errors import InvalidRequest

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: The latest second a ``created`` bound may name (9999-12-31T23:59:59Z), so every bound is a timestamp.
MAX_CREATED = 253_402_300_799
_CREATED = re.compile(r"^created(\[(gt|gte|lt|lte)\])?$")
_SECONDS = re.compile(r"^\d{1,12}$")
#: What every list takes; the lists of the API's objects take ``ending_before`` and ``created`` too.
FORWARDS = frozenset({"limit", "starting_after"})
CREATED = frozenset({"created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"})
STRIPES = frozenset({"ending_before", *CREATED})
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None
    ending_before: str | None = None
    created_from: int | None = None  # inclusive, unix seconds
    created_until: int | None = None  # exclusive, unix seconds

    @property
    def backwards(self) -> bool:
        """Towards newer objects: the page nearest ``ending_before``, still answered newest first."""
        return self.ending_before is not None

    @property
    def cursor(self) -> tuple[str, str] | None:
        """``(parameter, id)`` of the cursor, if there is one."""
        if self.starting_after is not None:
            return "starting_after", self.starting_after
        if self.ending_before is not None:
            return "ending_before", self.ending_before
        return None

    def trim(self, found: list[T]) -> tuple[list[T], bool]:
        """Of up to ``limit + 1`` objects (newest first), the page and whether more lie beyond it: the extra
        one is the farthest from the cursor, the oldest going forwards and the newest going backwards."""
        more = len(found) > self.limit
        if not more:
            return found, False
        return (found[1:] if self.backwards else found[: self.limit]), True


def _limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    return int(raw)


def _seconds(name: str, raw: str) -> int:
    if not _SECONDS.match(raw) or int(raw) > MAX_CREATED:
        raise InvalidRequest(f"{name} must be a unix timestamp in whole seconds", param=name)
    return int(raw)


def _created_range(given: dict[str, int]) -> tuple[int | None, int | None]:
    """``created=t`` and ``created[op]=t`` as one interval ``[from, until)``."""
    lows = [given[k] for k in ("created", "created[gte]") if k in given]
    highs = [given[k] + 1 for k in ("created", "created[lte]") if k in given]
    if "created[gt]" in given:
        lows.append(given["created[gt]"] + 1)
    if "created[lt]" in given:
        highs.append(given["created[lt]"])
    return (max(lows) if lows else None), (min(highs) if highs else None)


def parse_page(
    pairs: Iterable[tuple[str, str]], own: frozenset[str] = frozenset(), *, stripes: bool = True
) -> tuple[Page, dict[str, str]]:
    """The page a list's query asks for, and the values of the list's ``own`` filters (``charge``, …);
    ``stripes``: the list takes ``ending_before`` and ``created`` (the admin's lists do not).

    A parameter given twice, one the list does not take, or both cursors at once is a 400 naming it.
    """
    known = FORWARDS | own | (STRIPES if stripes else frozenset())
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise InvalidRequest(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        if name in values:
            raise InvalidRequest(f"{name} is given more than once", param=name)
        values[name] = value
    if "starting_after" in values and "ending_before" in values:
        message = "You may only specify one of these parameters: starting_after, ending_before"
        raise InvalidRequest(message, param="ending_before")
    bounds = {name: _seconds(name, value) for name, value in values.items() if _CREATED.match(name)}
    created_from, created_until = _created_range(bounds)
    page = Page(
        limit=_limit(values["limit"]) if "limit" in values else DEFAULT_LIMIT,
        starting_after=values.get("starting_after"),
        ending_before=values.get("ending_before"),
        created_from=created_from,
        created_until=created_until,
    )
    return page, {name: value for name, value in values.items() if name in own}
