"""A merchant's events on the wire: the query ``GET /v1/events`` takes, checked, and the event object."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from payray.errors import InvalidRequest
from serve_app.stores.events import Event, EventFilter

#: The Stripe API version whose shapes the events follow (the one the PSP emulator speaks).
API_VERSION = "2026-10-28.endive"

#: An event type, or a pattern of them with ``*`` for any part (``charge.*``, ``charge.dispute.*``).
_TYPE = re.compile(r"[a-z_]+(\.([a-z_]+|\*))*|\*")
_CREATED = re.compile(r"created\[(gt|gte|lt|lte)\]")
_TYPES = re.compile(r"types\[\d*\]")
_PAGING = frozenset({"limit", "starting_after"})
MAX_TYPES = 20


def event_object(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": int(e.created_at.timestamp()),
        "data": {"object": e.payload},
        "livemode": False,
        "pending_webhooks": e.pending_webhooks,
        "request": {"id": None, "idempotency_key": e.idempotency_key},
        "type": e.type,
    }


def _pattern(param: str, value: str) -> str:
    """The type as a LIKE pattern; a malformed one is a 400 naming ``param``."""
    if len(value) > 100 or not _TYPE.fullmatch(value):
        raise InvalidRequest(f"Invalid event type: '{value[:100]}'", param=param)
    return value.replace("_", r"\_").replace("*", "%")


def _seconds(param: str, value: str) -> int:
    if not value.isdigit() or len(value) > 12:
        raise InvalidRequest(f"{param} must be a Unix timestamp in seconds", param=param)
    return int(value)


def event_filter(params: Iterable[tuple[str, str]]) -> EventFilter:
    """The list's filters from its query (``type`` or ``types[]``, ``created`` or ``created[op]``); any other
    parameter than these and paging is refused, naming it."""
    type_: str | None = None
    types: list[str] = []
    created: dict[str, int] = {}
    for name, value in params:
        if name == "type":
            type_ = _pattern(name, value)
        elif _TYPES.fullmatch(name):
            types.append(_pattern("types", value))
        elif name == "created":
            created["gte"] = created["lte"] = _seconds(name, value)
        elif match := _CREATED.fullmatch(name):
            created[match.group(1)] = _seconds(name, value)
        elif name not in _PAGING:
            raise InvalidRequest(f"Received unknown parameter: {name[:100]}", param=name[:100])
    if type_ is not None and types:
        raise InvalidRequest("You may pass only one of type and types", param="types")
    if len(types) > MAX_TYPES:
        raise InvalidRequest(f"types takes at most {MAX_TYPES} event types", param="types")
    patterns = [type_] if type_ is not None else types or None
    return EventFilter(types=patterns, created=created or None)
