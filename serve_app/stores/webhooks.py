"""SQL for the PSP's webhook events: each recorded once, in the transaction that applies it."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

RECORD_EVENT = """
INSERT INTO webhook_events (id, type, object_id, effect) VALUES (%(id)s, %(type)s, %(object_id)s, %(effect)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

SET_EFFECT = "UPDATE webhook_events SET effect = %(effect)s WHERE id = %(id)s"


async def record_event(
    conn: AsyncConnection[Any], event_id: str, type_: str, object_id: str | None, effect: str
) -> bool:
    """Record the event as being applied; ``False`` if it was recorded before (a redelivery). A concurrent
    delivery of the same event waits here for the first to commit, then finds it."""
    params = {"id": event_id, "type": type_, "object_id": object_id, "effect": effect}
    return await (await conn.execute(RECORD_EVENT, params)).fetchone() is not None


async def set_effect(conn: AsyncConnection[Any], event_id: str, effect: str) -> None:
    await conn.execute(SET_EFFECT, {"id": event_id, "effect": effect})
