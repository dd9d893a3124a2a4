"""SQL for a merchant's webhook endpoints and their deliveries: who gets which event, when the next attempt
is due, and the record of every attempt.

A delivery is claimed with ``FOR UPDATE SKIP LOCKED`` and leased by moving its ``next_attempt_at`` past the
attempt's timeout, so no transaction stays open across an HTTP request and a worker that dies mid-attempt
leaves the delivery to be tried again when the lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from payray.pages import Page
from serve_app.stores.events import RETENTION_DAYS, Event
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_one


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str  # we_…
    merchant_id: str
    url: str
    enabled_events: list[str]
    secret: str
    created_at: datetime
    status: str = "enabled"
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    api_version: str | None = None

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"WebhookEndpoint(id={self.id!r}, merchant_id={self.merchant_id!r}, status={self.status!r})"


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery: the attempt to make now (``attempt``), where to, and the event."""

    id: int
    attempt: int
    began_at: datetime
    endpoint_id: str
    url: str
    secret: str
    event: Event

    def __repr__(self) -> str:
        return f"DueDelivery(id={self.id}, endpoint_id={self.endpoint_id!r}, attempt={self.attempt})"


_COLUMNS = (
    "id, merchant_id, url, enabled_events, secret, created_at, status, description, metadata, api_version"
)
_LIVE = "id = %(id)s AND merchant_id = %(merchant_id)s AND deleted_at IS NULL"

INSERT_ENDPOINT = f"""
INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, secret, created_at, description,
                               metadata, api_version)
VALUES (%(id)s, %(merchant_id)s, %(url)s, %(enabled_events)s, %(secret)s, %(created_at)s, %(description)s,
        %(metadata)s, %(api_version)s)
RETURNING {_COLUMNS}
"""
SELECT_ENDPOINT = f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE {_LIVE}"
LOCK_ENDPOINT = f"{SELECT_ENDPOINT} FOR UPDATE"
UPDATE_ENDPOINT = f"""
UPDATE webhook_endpoints SET url = %(url)s, enabled_events = %(enabled_events)s,
       description = %(description)s, metadata = %(metadata)s, status = %(status)s, updated_at = now()
WHERE {_LIVE}
RETURNING {_COLUMNS}
"""
DELETE_ENDPOINT = f"UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now() WHERE {_LIVE}"
LIST_ENDPOINTS = newest_first("webhook_endpoints", _COLUMNS, only="deleted_at IS NULL")

#: An event, the first time the consumers see it, becomes one pending delivery per live, enabled endpoint of
#: its merchant that takes its type and existed when the event happened.
FAN_OUT = """
INSERT INTO webhook_deliveries (endpoint_id, outbox_id, merchant_id)
SELECT w.id, o.id, o.merchant_id
FROM outbox o JOIN webhook_endpoints w ON w.merchant_id = o.merchant_id
WHERE o.id = ANY(%(outbox_ids)s) AND w.status = 'enabled' AND w.deleted_at IS NULL
  AND w.created_at <= o.created_at
  AND (o.topic = ANY(w.enabled_events) OR '*' = ANY(w.enabled_events))
ON CONFLICT (endpoint_id, outbox_id) DO NOTHING
"""

_EVENT_COLUMNS = """o.event_id, o.merchant_id, o.topic, o.payload, o.idempotency_key, o.created_at,
       o.previous_attributes,
       (SELECT count(*) FROM webhook_deliveries p WHERE p.outbox_id = o.id AND p.status = 'pending')"""

#: Up to ``limit`` due deliveries of enabled endpoints, each leased for ``lease_s``: the attempt counted now.
CLAIM_DUE = f"""
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
    JOIN webhook_endpoints w ON w.id = d.endpoint_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND w.status = 'enabled' AND w.deleted_at IS NULL
    ORDER BY d.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d
    SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => %(lease_s)s)
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempts, d.began_at, d.endpoint_id, d.outbox_id
)
SELECT c.id, c.attempts, c.began_at, c.endpoint_id, w.url, w.secret, {_EVENT_COLUMNS}
FROM claimed c
JOIN webhook_endpoints w ON w.id = c.endpoint_id
JOIN outbox o ON o.id = c.outbox_id
"""

RECORD_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, endpoint_id, outbox_id, attempt, http_status, error, duration_ms)
SELECT id, endpoint_id, outbox_id, %(attempt)s, %(http_status)s, %(error)s, %(duration_ms)s
FROM webhook_deliveries WHERE id = %(id)s
"""
SUCCEEDED = """
UPDATE webhook_deliveries SET status = 'succeeded', delivered_at = now()
WHERE id = %(id)s AND attempts = %(attempt)s
"""
RETRY_AT = """
UPDATE webhook_deliveries SET next_attempt_at = to_timestamp(%(at)s)
WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'
"""
#: The window is over: the delivery has failed. Its endpoint is disabled unless something reached it since
#: the delivery began, and the endpoint's other pending deliveries are abandoned with it.
GIVE_UP = """
WITH failed AS (
    UPDATE webhook_deliveries SET status = 'failed'
    WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'pending'
    RETURNING endpoint_id, began_at
), disabled AS (
    UPDATE webhook_endpoints w SET status = 'disabled', updated_at = now()
    FROM failed f
    WHERE w.id = f.endpoint_id AND w.status = 'enabled' AND NOT EXISTS (
        SELECT 1 FROM webhook_deliveries s
        WHERE s.endpoint_id = f.endpoint_id AND s.status = 'succeeded' AND s.delivered_at >= f.began_at)
    RETURNING w.id
)
UPDATE webhook_deliveries d SET status = 'abandoned'
FROM disabled WHERE d.endpoint_id = disabled.id AND d.status = 'pending' AND d.id <> %(id)s
RETURNING d.id
"""
ENDPOINT_DISABLED = "SELECT status = 'disabled' FROM webhook_endpoints WHERE id = %(id)s"

_KEPT = f"o.created_at > now() - interval '{RETENTION_DAYS} days'"
SELECT_EVENT_ANY_MERCHANT = f"""
SELECT o.id, o.merchant_id, o.topic FROM outbox o WHERE o.event_id = %(event_id)s AND {_KEPT}
"""
#: A resend by hand: pending again, due now, its window begun anew; its attempts keep counting.
RESEND = """
INSERT INTO webhook_deliveries (endpoint_id, outbox_id, merchant_id)
SELECT w.id, %(outbox_id)s, w.merchant_id FROM webhook_endpoints w
WHERE w.id = ANY(%(endpoint_ids)s)
ON CONFLICT (endpoint_id, outbox_id) DO UPDATE
SET status = 'pending', began_at = now(), next_attempt_at = now(), delivered_at = NULL
RETURNING endpoint_id
"""
LIVE_ENDPOINTS = f"""
SELECT {_COLUMNS} FROM webhook_endpoints
WHERE merchant_id = %(merchant_id)s AND deleted_at IS NULL ORDER BY created_at, id
"""


def _endpoint(**columns: Any) -> WebhookEndpoint:
    return WebhookEndpoint(**{**columns, "enabled_events": list(columns["enabled_events"])})


def _params(e: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": e.id, "merchant_id": e.merchant_id, "url": e.url, "enabled_events": e.enabled_events,
        "secret": e.secret, "created_at": e.created_at, "description": e.description,
        "metadata": Jsonb(e.metadata), "api_version": e.api_version, "status": e.status,
    }  # fmt: skip


async def insert_endpoint(conn: AsyncConnection[Any], endpoint: WebhookEndpoint) -> WebhookEndpoint:
    created = await fetch_one(conn, INSERT_ENDPOINT, _params(endpoint), _endpoint)
    assert created is not None
    return created


async def load_endpoint(
    conn: AsyncConnection[Any], endpoint_id: str, merchant_id: str
) -> WebhookEndpoint | None:
    return await fetch_one(conn, SELECT_ENDPOINT, {"id": endpoint_id, "merchant_id": merchant_id}, _endpoint)


async def lock_endpoint(
    conn: AsyncConnection[Any], endpoint_id: str, merchant_id: str
) -> WebhookEndpoint | None:
    return await fetch_one(conn, LOCK_ENDPOINT, {"id": endpoint_id, "merchant_id": merchant_id}, _endpoint)


async def save_endpoint(conn: AsyncConnection[Any], endpoint: WebhookEndpoint) -> WebhookEndpoint:
    saved = await fetch_one(conn, UPDATE_ENDPOINT, _params(endpoint), _endpoint)
    assert saved is not None, "the caller holds the row's lock"
    return saved


async def delete_endpoint(conn: AsyncConnection[Any], endpoint: WebhookEndpoint) -> None:
    await conn.execute(DELETE_ENDPOINT, {"id": endpoint.id, "merchant_id": endpoint.merchant_id})


async def list_endpoints(conn: AsyncConnection[Any], merchant_id: str, page: Page) -> list[WebhookEndpoint]:
    params = page_params(merchant_id, page)
    return await read_page(conn, LIST_ENDPOINTS, page, params, lambda row: _endpoint(**row))


async def live_endpoints(conn: AsyncConnection[Any], merchant_id: str) -> list[WebhookEndpoint]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LIVE_ENDPOINTS, {"merchant_id": merchant_id})
        return [_endpoint(**row) for row in await cur.fetchall()]


async def fan_out(conn: AsyncConnection[Any], outbox_ids: list[int]) -> int:
    """The pending deliveries of these (newly delivered) events; how many."""
    if not outbox_ids:
        return 0
    cur = await conn.execute(FAN_OUT, {"outbox_ids": outbox_ids})
    return cur.rowcount


async def claim_due(conn: AsyncConnection[Any], limit: int, lease_s: float) -> list[DueDelivery]:
    cur = await conn.execute(CLAIM_DUE, {"limit": limit, "lease_s": lease_s})
    claimed = []
    for row in await cur.fetchall():
        delivery_id, attempt, began_at, endpoint_id, url, secret, *event = row
        claimed.append(DueDelivery(delivery_id, attempt, began_at, endpoint_id, url, secret, Event(*event)))
    return claimed


async def record_attempt(
    conn: AsyncConnection[Any], delivery: DueDelivery, http_status: int | None, error: str | None,
    duration_ms: int,
) -> None:  # fmt: skip
    params = {"id": delivery.id, "attempt": delivery.attempt, "http_status": http_status, "error": error,
              "duration_ms": duration_ms}  # fmt: skip
    await conn.execute(RECORD_ATTEMPT, params)


async def succeeded(conn: AsyncConnection[Any], delivery: DueDelivery) -> None:
    await conn.execute(SUCCEEDED, {"id": delivery.id, "attempt": delivery.attempt})


async def retry_at(conn: AsyncConnection[Any], delivery: DueDelivery, at_unix_s: float) -> None:
    await conn.execute(RETRY_AT, {"id": delivery.id, "attempt": delivery.attempt, "at": at_unix_s})


async def give_up(conn: AsyncConnection[Any], delivery: DueDelivery) -> bool:
    """Mark the delivery failed (disabling its endpoint, unless something reached it meanwhile); whether the
    endpoint is now disabled."""
    await conn.execute(GIVE_UP, {"id": delivery.id, "attempt": delivery.attempt})
    row = await (await conn.execute(ENDPOINT_DISABLED, {"id": delivery.endpoint_id})).fetchone()
    return bool(row and row[0])


async def event_for_resend(conn: AsyncConnection[Any], event_id: str) -> tuple[int, str, str] | None:
    """``(outbox id, merchant id, type)`` of a kept event, whoever's it is (the admin asks)."""
    row = await (await conn.execute(SELECT_EVENT_ANY_MERCHANT, {"event_id": event_id})).fetchone()
    return (row[0], row[1], row[2]) if row else None


async def resend(conn: AsyncConnection[Any], outbox_id: int, endpoint_ids: list[str]) -> list[str]:
    cur = await conn.execute(RESEND, {"outbox_id": outbox_id, "endpoint_ids": endpoint_ids})
    return [row[0] for row in await cur.fetchall()]
