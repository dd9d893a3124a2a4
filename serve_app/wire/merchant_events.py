"""A merchant's events on the wire: the query ``GET /v1/events`` takes, checked, and the event object."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from payray.errors import InvalidRequest
from payray.pages import Page, parse_page
from serve_app.stores.events import Event, EventFilter

#: The Stripe API version whose shapes the events follow (the one the PSP emulator speaks).
API_VERSION = "2026-10-28.endive"

#: An event type, or a pattern of them with ``*`` for any part (``charge.*``, ``charge.dispute.*``).
_TYPE = re.compile(r"[a-z_]+(\.([a-z_]+|\*))*|\*")
_TYPES = re.compile(r"types\[\d*\]")
MAX_TYPES = 20


def _data(e: Event) -> dict[str, Any]:
    """The object as the event left it and, on a ``*.updated`` event, the prior values of what changed."""
    if e.previous_attributes is None:
        return {"object": e.payload}
    return {"object": e.payload, "previous_attributes": e.previous_attributes}


def event_object(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": int(e.created_at.timestamp()),
        "data": _data(e),
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


def event_query(params: Iterable[tuple[str, str]]) -> tuple[Page, EventFilter]:
    """The list's page (``limit``, either cursor, ``created`` or ``created[op]``, as every list takes them)
    and its own filter (``type`` or ``types[]``); any other parameter is refused, naming it."""
    own: list[tuple[str, str]] = []
    paging: list[tuple[str, str]] = []
    for name, value in params:
        (own if name == "type" or _TYPES.fullmatch(name) else paging).append((name, value))
    page, _ = parse_page(paging)
    return page, event_filter(own)


def event_filter(params: Iterable[tuple[str, str]]) -> EventFilter:
    """The types the list's query asks for (``type`` or ``types[]``, which Stripe's SDKs send as
    ``types[0]``, ``types[1]``, …); a malformed one is refused, naming it."""
    type_: str | None = None
    types: list[str] = []
    for name, value in params:
        if name == "type":
            type_ = _pattern(name, value)
        elif _TYPES.fullmatch(name):
            types.append(_pattern("types", value))
        else:
            raise InvalidRequest(f"Received unknown parameter: {name[:100]}", param=name[:100])
    if type_ is not None and types:
        raise InvalidRequest("You may pass only one of type and types", param="types")
    if len(types) > MAX_TYPES:
        raise InvalidRequest(f"types takes at most {MAX_TYPES} event types", param="types")
    patterns = [type_] if type_ is not None else types or None
    return EventFilter(types=patterns)
