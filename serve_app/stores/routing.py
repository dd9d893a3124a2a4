"""SQL for merchants' PSP routing: the PSPs a merchant's new payments try, in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from payray.errors import NotFound

#: What a merchant without a routing of its own gets: Stripe alone, as before there was a second PSP.
DEFAULT_ROUTING = ("stripe",)

ROUTING_OF = """
SELECT m.id, r.psps, r.updated_at FROM merchants m
LEFT JOIN merchant_psp_routing r ON r.merchant_id = m.id WHERE m.id = %s
"""
SET_ROUTING = """
INSERT INTO merchant_psp_routing (merchant_id, psps) VALUES (%s, %s)
ON CONFLICT (merchant_id) DO UPDATE SET psps = EXCLUDED.psps, updated_at = now()
RETURNING updated_at
"""


async def routing_of(conn: AsyncConnection[Any], merchant_id: str) -> dict[str, Any]:
    cur = await conn.execute(ROUTING_OF, (merchant_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"No such merchant: '{merchant_id}'", param="merchant")
    psps, updated = (row[1], row[2]) if row[1] is not None else (list(DEFAULT_ROUTING), None)
    return _routing_object(merchant_id, psps, updated)


async def set_routing(conn: AsyncConnection[Any], merchant_id: str, psps: Sequence[str]) -> dict[str, Any]:
    """Replace a merchant's routing with ``psps`` (already checked by ``payray.routing``)."""
    await routing_of(conn, merchant_id)  # 404 for an unknown merchant, before anything is written
    cur = await conn.execute(SET_ROUTING, (merchant_id, list(psps)))
    row = await cur.fetchone()
    assert row is not None
    return _routing_object(merchant_id, list(psps), row[0])


def _routing_object(merchant_id: str, psps: list[str], updated: Any) -> dict[str, Any]:
    return {
        "object": "psp_routing",
        "merchant": merchant_id,
        "psps": psps,
        "updated": int(updated.timestamp()) if updated is not None else None,
    }


ALL_ROUTINGS = "SELECT merchant_id, psps FROM merchant_psp_routing"


async def all_routings(conn: AsyncConnection[Any]) -> dict[str, tuple[str, ...]]:
    """Every merchant's PSPs that were set, in the order its new payments try them (the others route by
    ``DEFAULT_ROUTING``)."""
    rows = await (await conn.execute(ALL_ROUTINGS)).fetchall()
    return {str(merchant): tuple(psps) for merchant, psps in rows}
