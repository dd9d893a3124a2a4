"""What the ops page reads from Postgres: work in progress and work waiting, each through a partial index."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

#: Unfinished charges by state (the predicate is ``payments_unfinished``'s, so the index answers), and how
#: many of each have waited past recovery's grace.
UNFINISHED_CHARGES = """
SELECT state, count(*), count(*) FILTER (WHERE updated_at < now() - %(grace_s)s * interval '1 second')
  FROM payments
 WHERE state NOT IN ('succeeded', 'declined', 'failed', 'compensated', 'requires_capture', 'canceled')
 GROUP BY state
"""
UNFINISHED_REFUNDS = "SELECT count(*) FROM refunds WHERE state NOT IN ('succeeded', 'failed')"
OUTBOX_WAITING = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


async def work_in_progress(conn: AsyncConnection[Any], grace_s: float) -> dict[str, Any]:
    """Unsettled charges by state, those stuck past ``grace_s``, unfinished refunds, unpublished events."""
    cur = await conn.execute(UNFINISHED_CHARGES, {"grace_s": grace_s})
    by_state: dict[str, int] = {}
    stuck = 0
    for state, count, late in await cur.fetchall():
        by_state[state] = int(count)
        stuck += int(late)
    refunds = await (await conn.execute(UNFINISHED_REFUNDS)).fetchone()
    outbox = await (await conn.execute(OUTBOX_WAITING)).fetchone()
    return {
        "charges_by_state": by_state,
        "pending": sum(by_state.values()) - by_state.get("unknown", 0),
        "unknown": by_state.get("unknown", 0),
        "stuck": stuck,
        "refunds_unfinished": int(refunds[0]) if refunds else 0,
        "outbox_waiting": int(outbox[0]) if outbox else 0,
    }
