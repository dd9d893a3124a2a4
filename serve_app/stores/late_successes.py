"""SQL for late successes (``late_successes``) and the ended attempts the recovery sweep asks about."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row

from payray.ids import new_id


@dataclass(frozen=True)
class LateSuccess:
    id: str
    payment_id: str
    merchant_id: str
    psp: str
    psp_reference: str
    amount: int
    currency: str
    found_as: str  # captured | authorized
    found_by: str
    state: str  # found | reversed
    psp_refund_reference: str | None


_COLUMNS = (
    "id, payment_id, merchant_id, psp, psp_reference, amount, currency, found_as, found_by, state, "
    "psp_refund_reference"
)
#: The row is new, or was already found: either way the caller gets it back.
RECORD = f"""
WITH inserted AS (
    INSERT INTO late_successes (id, payment_id, merchant_id, psp, psp_reference, amount, currency, found_as,
                                found_by)
    VALUES (%(id)s, %(payment_id)s, %(merchant_id)s, %(psp)s, %(psp_reference)s, %(amount)s, %(currency)s,
            %(found_as)s, %(found_by)s)
    ON CONFLICT (psp, psp_reference) DO NOTHING
    RETURNING {_COLUMNS}
)
SELECT {_COLUMNS} FROM inserted
UNION ALL
SELECT {_COLUMNS} FROM late_successes WHERE psp = %(psp)s AND psp_reference = %(psp_reference)s
LIMIT 1
"""
REVERSED = """
UPDATE late_successes SET state = 'reversed', psp_refund_reference = %s, updated_at = now()
WHERE id = %s AND state = 'found'
"""
TOUCH = "UPDATE late_successes SET updated_at = now() WHERE id = %s"
STUCK = f"""
SELECT {_COLUMNS} FROM late_successes
WHERE state = 'found' AND updated_at < now() - %(grace)s * interval '1 second'
ORDER BY updated_at LIMIT %(limit)s
"""
#: Attempts that ended within the last days and were not asked about lately (or ever), oldest question first.
ATTEMPTS_TO_CHECK = """
SELECT a.idempotency_key, a.payment_id, a.psp FROM payment_attempts a
WHERE a.created_at > now() - %(days)s * interval '1 day'
  AND a.created_at < now() - %(grace)s * interval '1 second'
  AND (a.checked_at IS NULL OR a.checked_at < now() - %(every)s * interval '1 second')
ORDER BY a.checked_at NULLS FIRST, a.created_at LIMIT %(limit)s
"""
CHECKED = "UPDATE payment_attempts SET checked_at = now() WHERE idempotency_key = %s"
REFERENCES = "SELECT psp, psp_reference, id, state FROM late_successes"


async def record(
    conn: AsyncConnection[Any],
    *,
    payment_id: str,
    merchant_id: str,
    psp: str,
    psp_reference: str,
    amount: int,
    currency: str,
    found_as: str,
    found_by: str,
) -> LateSuccess:
    """The late success of ``psp_reference`` at ``psp``: recorded now, or as it was found before."""
    params = {
        "id": new_id("ls"),
        "payment_id": payment_id,
        "merchant_id": merchant_id,
        "psp": psp,
        "psp_reference": psp_reference,
        "amount": amount,
        "currency": currency.lower(),
        "found_as": found_as,
        "found_by": found_by,
    }
    async with conn.cursor(row_factory=class_row(LateSuccess)) as cur:
        await cur.execute(RECORD, params)
        row = await cur.fetchone()
    assert row is not None, "inserted or found"
    return row


async def mark_reversed(conn: AsyncConnection[Any], late_id: str, psp_refund_reference: str | None) -> None:
    await conn.execute(REVERSED, (psp_refund_reference, late_id))


async def touch(conn: AsyncConnection[Any], late_id: str) -> None:
    """Leave a reversal that is still unknown for the next sweep's grace."""
    await conn.execute(TOUCH, (late_id,))


async def stuck(conn: AsyncConnection[Any], grace_s: float, limit: int) -> list[LateSuccess]:
    async with conn.cursor(row_factory=class_row(LateSuccess)) as cur:
        await cur.execute(STUCK, {"grace": grace_s, "limit": limit})
        return await cur.fetchall()


async def attempts_to_check(
    conn: AsyncConnection[Any], *, days: int, grace_s: float, every_s: float, limit: int
) -> list[tuple[str, str, str]]:
    """``(attempt key, payment id, PSP)`` of ended attempts due a question to their PSP."""
    params = {"days": days, "grace": grace_s, "every": every_s, "limit": limit}
    rows = await (await conn.execute(ATTEMPTS_TO_CHECK, params)).fetchall()
    return [(str(key), str(payment), str(psp)) for key, payment, psp in rows]


async def mark_checked(conn: AsyncConnection[Any], attempt_key: str) -> None:
    await conn.execute(CHECKED, (attempt_key,))
