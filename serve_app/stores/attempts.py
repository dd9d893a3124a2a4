"""SQL for a payment's attempts: the ones it left behind (``payment_attempts``) and its current one."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from payray.errors import NotFound

ATTEMPTS_OF = """
SELECT a.psp, a.idempotency_key, a.psp_reference, false AS current, a.ended, a.failure_code, a.created_at
FROM payment_attempts a WHERE a.payment_id = %(id)s
UNION ALL
SELECT p.psp, p.psp_idempotency_key, p.psp_reference, true, NULL, NULL, now()
FROM payments p WHERE p.id = %(id)s
ORDER BY current, created_at
"""


async def attempts_of(conn: AsyncConnection[Any], payment_id: str) -> dict[str, Any]:
    """A payment's attempts, the ones it left first and its current one last; 404 for no such payment."""
    rows = await (await conn.execute(ATTEMPTS_OF, {"id": payment_id})).fetchall()
    if not rows:
        raise NotFound(f"No such charge: '{payment_id}'", param="id")
    keys = ("psp", "idempotency_key", "psp_reference", "current", "ended", "failure_code")
    data = [{"object": "payment_attempt", **dict(zip(keys, row[:6], strict=True))} for row in rows]
    return {"object": "list", "data": data}
