"""Webhook endpoints: a merchant's create, update and delete (under a row lock), and a resend by hand.

The secret (``whsec_…``) is made here and shown once, in the create's answer; afterwards the endpoint object
leaves it out. It is stored as made, since every delivery signs with it.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from payray.errors import InvalidRequest, NotFound
from payray.ids import new_id
from payray.metadata import merged_metadata
from payray.webhooks import subscribed
from serve_app.stores import webhook_endpoints as store
from serve_app.stores.webhook_endpoints import WebhookEndpoint
from serve_app.wire.schemas import WebhookEndpointCreate, WebhookEndpointUpdate

_REQUIRED = ("url", "enabled_events", "disabled")


def webhook_endpoint_object(e: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    shown = {
        "id": e.id,
        "object": "webhook_endpoint",
        "api_version": e.api_version,
        "application": None,
        "created": int(e.created_at.timestamp()),
        "description": e.description,
        "enabled_events": e.enabled_events,
        "livemode": False,
        "metadata": e.metadata,
        "status": e.status,
        "url": e.url,
    }
    if with_secret:
        shown["secret"] = e.secret
    return shown


def deleted_webhook_endpoint_object(endpoint_id: str) -> dict[str, Any]:
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


def no_such_endpoint(endpoint_id: str, param: str = "id") -> NotFound:
    return NotFound(f"No such webhook endpoint: '{endpoint_id}'", param=param)


def updated(endpoint: WebhookEndpoint, body: WebhookEndpointUpdate) -> WebhookEndpoint:
    """The endpoint with what the update sent; ``metadata`` merges key by key (an empty value removes its
    key), null clears all of it."""
    sent = body.model_fields_set
    for name in _REQUIRED:
        if name in sent and getattr(body, name) is None:
            raise InvalidRequest(f"{name} cannot be emptied", param=name)
    changes: dict[str, Any] = {}
    if "url" in sent:
        changes["url"] = body.url
    if "enabled_events" in sent:
        changes["enabled_events"] = body.enabled_events
    if "description" in sent:
        changes["description"] = body.description
    if "disabled" in sent:
        changes["status"] = "disabled" if body.disabled else "enabled"
    if "metadata" in sent:  # null clears it all, as an empty ``metadata=`` does
        sent_metadata = "" if body.metadata is None else body.metadata
        changes["metadata"] = merged_metadata(endpoint.metadata, sent_metadata)
    return replace(endpoint, **changes)


class WebhookEndpoints:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def create(self, merchant_id: str, body: WebhookEndpointCreate) -> dict[str, Any]:
        fresh = WebhookEndpoint(
            id=new_id("we"),
            merchant_id=merchant_id,
            url=body.url,
            enabled_events=body.enabled_events,
            secret="whsec_" + secrets.token_urlsafe(32),
            created_at=datetime.now(UTC),
            description=body.description,
            metadata={k: v for k, v in (body.metadata or {}).items() if v != ""},
            api_version=body.api_version,
        )
        async with self._pool.connection() as conn:
            created = await store.insert_endpoint(conn, fresh)
        return webhook_endpoint_object(created, with_secret=True)

    async def update(self, merchant_id: str, endpoint_id: str, body: WebhookEndpointUpdate) -> dict[str, Any]:
        async with self._pool.connection() as conn, conn.transaction():
            current = await store.lock_endpoint(conn, endpoint_id, merchant_id)
            if current is None:
                raise no_such_endpoint(endpoint_id)
            changed = updated(current, body)
            if changed == current:
                return webhook_endpoint_object(current)
            saved = await store.save_endpoint(conn, changed)
        return webhook_endpoint_object(saved)

    async def delete(self, merchant_id: str, endpoint_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn, conn.transaction():
            current = await store.lock_endpoint(conn, endpoint_id, merchant_id)
            if current is None:
                raise no_such_endpoint(endpoint_id)
            await store.delete_endpoint(conn, current)
        return deleted_webhook_endpoint_object(endpoint_id)

    async def resend(self, event_id: str, endpoint_id: str | None) -> dict[str, Any]:
        """Deliver the event again (pending, due now, a fresh retry window): to ``endpoint_id``, which must be
        an enabled endpoint of the event's merchant, else to each enabled endpoint that takes its type."""
        async with self._pool.connection() as conn, conn.transaction():
            found = await store.event_for_resend(conn, event_id)
            if found is None:
                raise NotFound(f"No such event: '{event_id}'", param="id")
            outbox_id, merchant_id, event_type = found
            endpoints = await store.live_endpoints(conn, merchant_id or "")
            if endpoint_id is not None:
                chosen = [e for e in endpoints if e.id == endpoint_id]
                if not chosen:
                    raise no_such_endpoint(endpoint_id, param="endpoint")
                if chosen[0].status != "enabled":
                    raise InvalidRequest(f"webhook endpoint {endpoint_id} is disabled", param="endpoint")
            else:
                chosen = [
                    e for e in endpoints if e.status == "enabled" and subscribed(e.enabled_events, event_type)
                ]
            sent_to = await store.resend(conn, outbox_id, [e.id for e in chosen]) if chosen else []
        return {"object": "webhook_resend", "event": event_id, "endpoints": sorted(sent_to)}
