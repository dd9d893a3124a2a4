"""Braintree's transaction search criteria, as the SDK's ``TransactionSearch`` sends them, matched against
stored transactions. Pure: the gateway picks the candidates (an index when it can) and this filters them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from psp.emulator.braintree.transactions import Txn

PAGE_SIZE = 50
TEXT_FIELDS = ("id", "order_id")
MULTIPLE_VALUE_FIELDS = {"ids": "id", "status": "status", "type": "type"}
RANGE_FIELDS = ("created_at", "settled_at")
TEXT_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "is": lambda value, wanted: value == wanted,
    "is_not": lambda value, wanted: value != wanted,
    "starts_with": lambda value, wanted: value.startswith(wanted),
    "ends_with": lambda value, wanted: value.endswith(wanted),
    "contains": lambda value, wanted: wanted in value,
}


class UnsupportedSearch(ValueError):
    """A criterion this emulator does not search by (answered 400, never silently ignored)."""


def validate(criteria: dict[str, Any]) -> None:
    for name, value in criteria.items():
        if name in TEXT_FIELDS:
            if not isinstance(value, dict) or not set(value) <= set(TEXT_OPERATORS):
                raise UnsupportedSearch(f"{name} takes one of {sorted(TEXT_OPERATORS)}")
        elif name in MULTIPLE_VALUE_FIELDS:
            if not isinstance(value, list):
                raise UnsupportedSearch(f"{name} takes a list of values")
        elif name in RANGE_FIELDS:
            if not isinstance(value, dict) or not set(value) <= {"min", "max", "is"}:
                raise UnsupportedSearch(f"{name} takes min, max or is")
        else:
            raise UnsupportedSearch(f"searching transactions by {name} is not supported by the emulator")


def matches(txn: Txn, criteria: dict[str, Any]) -> bool:
    for name, value in criteria.items():
        if name in TEXT_FIELDS:
            own = txn.get(name) or ""
            if not all(TEXT_OPERATORS[op](own, str(wanted)) for op, wanted in value.items()):
                return False
        elif name in MULTIPLE_VALUE_FIELDS:
            if txn.get(MULTIPLE_VALUE_FIELDS[name]) not in {str(v) for v in value}:
                return False
        elif name in RANGE_FIELDS and not _in_range(txn.get(name), value):
            return False
    return True


def _in_range(ts: int | None, bounds: dict[str, Any]) -> bool:
    if ts is None:
        return False
    low, high = bounds.get("min", bounds.get("is")), bounds.get("max", bounds.get("is"))
    return (low is None or ts >= _timestamp(low)) and (high is None or ts <= _timestamp(high))


def _timestamp(raw: Any) -> int:
    text = str(raw).strip().replace("Z", "+00:00")
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise UnsupportedSearch(f"not a date and time: {raw!r}") from None


def newest_first(txns: list[Txn]) -> list[Txn]:
    return sorted(txns, key=lambda t: (t["created_at"], t["id"]), reverse=True)
