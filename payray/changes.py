"""What an update changed, as Stripe's ``*.updated`` events tell it: ``data.previous_attributes``.

Given an object as rendered before and after a change, the attributes that differ with their values before
it. A hash (``metadata``) is compared key by key: it holds the prior value of each key that changed or went,
and null for a key that was added. Any other value (a list included) is given whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def previous_attributes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of ``before`` that ``after`` changed, at their prior values; empty if none did."""
    previous: dict[str, Any] = {}
    for name in [*before, *(name for name in after if name not in before)]:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            previous[name] = previous_attributes(old, new)
        else:
            previous[name] = old
    return previous
