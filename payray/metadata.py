"""Stripe's metadata updates: keys given are set, a key given an empty value is removed, and an empty
``metadata`` (``metadata=`` in a form) removes them all. The result keeps the limits a create has."""

from __future__ import annotations

from collections.abc import Mapping

from payray.errors import InvalidRequest

MAX_KEYS = 50
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500


def merged_metadata(current: Mapping[str, str], update: Mapping[str, str] | str | None) -> dict[str, str]:
    """``current`` after ``update``; ``None`` leaves it as it is, ``""`` empties it."""
    if update is None:
        return dict(current)
    if isinstance(update, str):
        if update:
            raise InvalidRequest("metadata must be a set of key-value pairs, or empty", param="metadata")
        return {}
    merged = dict(current)
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_KEYS:
        raise InvalidRequest(f"metadata holds at most {MAX_KEYS} keys", param="metadata")
    return merged
