"""SQL for a merchant's events: the outbox rows, as ``GET /v1/events`` shows them, for ``RETENTION_DAYS``.

The outbox is written in the transaction of each state change, so an event exists exactly when its change
committed. Rows older than the retention are neither listed nor retrievable, and ``delete_expired`` removes
them once they are published and delivered (never before).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from payray.pages import Page
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_one

RETENTION_DAYS = 30


@dataclass(frozen=True)
class Event:
    id: str  # evt_…
    merchant_id: str
    type: str
    payload: dict[str, Any]
    idempotency_key: str | None
    created_at: datetime
    previous_attributes: dict[str, Any] | None = None  # what a ``*.updated`` event's change replaced
    #: deliveries of it to the merchant's webhook endpoints not yet succeeded (nor given up)
    pending_webhooks: int = 0


@dataclass(frozen=True)
class EventFilter:
    """``types``: LIKE patterns (``%`` for Stripe's ``*``), any of which matches; the ``created`` range and
    the cursors are the ``Page``'s, as every list's."""

    types: list[str] | None = None


_COLUMNS = """event_id AS id, merchant_id, topic AS type, payload, idempotency_key, created_at,
    previous_attributes,
    (SELECT count(*) FROM webhook_deliveries w WHERE w.outbox_id = outbox.id AND w.status = 'pending')
        AS pending_webhooks"""
_KEPT = f"created_at > now() - interval '{RETENTION_DAYS} days'"

SELECT_EVENT = f"""
SELECT {_COLUMNS} FROM outbox WHERE event_id = %(id)s AND merchant_id = %(merchant_id)s AND {_KEPT}
"""

#: A page of the merchant's kept events, as every list pages (``serve_app.stores.pages``): the cursor names
#: an event by its public id, and the outbox id orders them (the order they were written in).
LIST_EVENTS = newest_first(
    "outbox",
    _COLUMNS,
    only=f"{_KEPT}\n  AND (%(types)s::text[] IS NULL OR topic LIKE ANY (%(types)s))",
    key="event_id",
    order=("id",),
)

#: Expired events whose row has done its work: published to the stream and delivered by the consumers.
DELETE_EXPIRED = f"""
DELETE FROM outbox WHERE id IN (
    SELECT o.id FROM outbox o
    WHERE o.created_at <= now() - interval '{RETENTION_DAYS} days' AND o.published_at IS NOT NULL
      AND EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.outbox_id = o.id)
    ORDER BY o.id LIMIT %(limit)s
)
"""


async def load_event(conn: AsyncConnection[Any], event_id: str, merchant_id: str) -> Event | None:
    return await fetch_one(conn, SELECT_EVENT, {"id": event_id, "merchant_id": merchant_id}, Event)


async def list_events(
    conn: AsyncConnection[Any], merchant_id: str, only: EventFilter, page: Page
) -> list[Event]:
    """Up to ``limit + 1`` events, newest first, beside the page's cursor (``Page.trim`` cuts the extra)."""
    params = page_params(merchant_id, page, types=only.types)
    return await read_page(conn, LIST_EVENTS, page, params, lambda row: Event(**row))


async def delete_expired(conn: AsyncConnection[Any], limit: int = 5000) -> int:
    """Delete up to ``limit`` expired, delivered events; how many."""
    cur = await conn.execute(DELETE_EXPIRED, {"limit": limit})
    return cur.rowcount
