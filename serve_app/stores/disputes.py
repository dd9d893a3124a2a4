"""SQL for disputes: recorded from the PSP's events (once per PSP dispute), moved by guarded status changes,
announced in the outbox on the connection that changed them (psycopg 3, async)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from payray.money import Money
from payray.pages import Page
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_all, fetch_one

_COLUMNS = "id, merchant_id, payment_id, psp_dispute_id, amount, currency, reason, status, created_at"


@dataclass(frozen=True)
class Dispute:
    id: str
    merchant_id: str
    payment_id: str
    psp_dispute_id: str
    amount: Money
    reason: str | None
    status: str
    created_at: datetime

    @property
    def currency(self) -> str:
        return self.amount.currency


def _dispute(*, amount: int, currency: str, **columns: Any) -> Dispute:
    """A row as a record: its amount becomes ``Money`` here, and only here."""
    return Dispute(amount=Money(amount, currency), **columns)


#: Opened (or, for a close seen first, opened already decided); nothing if the PSP dispute is known.
OPEN = f"""
INSERT INTO disputes (id, merchant_id, payment_id, psp_dispute_id, amount, currency, reason, status)
SELECT %(id)s, p.merchant_id, p.id, %(psp_dispute_id)s, %(amount)s, %(currency)s, %(reason)s, %(status)s
FROM payments p WHERE p.id = %(payment_id)s
ON CONFLICT (psp_dispute_id) DO NOTHING
RETURNING {_COLUMNS}
"""

DECIDE = f"""
UPDATE disputes SET status = %(status)s, updated_at = now()
WHERE psp_dispute_id = %(psp_dispute_id)s AND status IN ('opening', 'open')
RETURNING {_COLUMNS}
"""

ADVANCE = f"""
UPDATE disputes SET status = %(to)s, updated_at = now() WHERE id = %(id)s AND status = %(from)s
RETURNING {_COLUMNS}
"""

ANNOUNCE = """
INSERT INTO outbox (topic, aggregate_id, payload, merchant_id)
SELECT %(topic)s, id, %(payload)s, merchant_id FROM disputes WHERE id = %(id)s
"""

SELECT_ONE = f"SELECT {_COLUMNS} FROM disputes WHERE id = %(id)s AND merchant_id = %(merchant_id)s"
SELECT_BY_PSP = f"SELECT {_COLUMNS} FROM disputes WHERE psp_dispute_id = %(psp_dispute_id)s"
LIST = newest_first("disputes", _COLUMNS)

#: Disputes whose booking no request finished: the hold (or its release or loss) is still to be posted.
SELECT_STUCK = f"""
SELECT {_COLUMNS} FROM disputes
WHERE status IN ('opening', 'closing_won', 'closing_lost')
  AND updated_at < now() - %(grace)s * interval '1 second'
ORDER BY updated_at LIMIT %(limit)s
"""


async def _one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> Dispute | None:
    return await fetch_one(conn, sql, params, _dispute)


async def _all(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> list[Dispute]:
    return await fetch_all(conn, sql, params, _dispute)


async def insert_dispute(
    conn: AsyncConnection[Any], dispute_id: str, payment_id: str, psp_dispute: dict[str, Any], status: str
) -> Dispute | None:
    """Record the PSP's dispute of ``payment_id`` in ``status``; ``None`` if that PSP dispute is known."""
    params = {
        "id": dispute_id,
        "payment_id": payment_id,
        "psp_dispute_id": psp_dispute["id"],
        "amount": int(psp_dispute["amount"]),
        "currency": str(psp_dispute["currency"]),
        "reason": psp_dispute.get("reason"),
        "status": status,
    }
    return await _one(conn, OPEN, params)


async def decide(conn: AsyncConnection[Any], psp_dispute_id: str, status: str) -> Dispute | None:
    """Move an undecided (``opening``/``open``) dispute to ``status``; ``None`` if none was undecided."""
    return await _one(conn, DECIDE, {"psp_dispute_id": psp_dispute_id, "status": status})


async def advance(conn: AsyncConnection[Any], dispute: Dispute, to: str) -> Dispute | None:
    """Move ``dispute`` from the status it was read in to ``to``; ``None`` if it moved meanwhile."""
    return await _one(conn, ADVANCE, {"id": dispute.id, "from": dispute.status, "to": to})


async def announce(conn: AsyncConnection[Any], dispute_id: str, topic: str, payload: dict[str, Any]) -> None:
    await conn.execute(ANNOUNCE, {"topic": topic, "id": dispute_id, "payload": Jsonb(payload)})


async def load_by_psp(conn: AsyncConnection[Any], psp_dispute_id: str) -> Dispute | None:
    return await _one(conn, SELECT_BY_PSP, {"psp_dispute_id": psp_dispute_id})


async def load_dispute(conn: AsyncConnection[Any], dispute_id: str, merchant_id: str) -> Dispute | None:
    return await _one(conn, SELECT_ONE, {"id": dispute_id, "merchant_id": merchant_id})


async def list_disputes(conn: AsyncConnection[Any], merchant_id: str, page: Page) -> list[Dispute]:
    return await read_page(conn, LIST, page, page_params(merchant_id, page), lambda row: _dispute(**row))


async def stuck_disputes(conn: AsyncConnection[Any], grace_s: float, limit: int) -> list[Dispute]:
    return await _all(conn, SELECT_STUCK, {"grace": grace_s, "limit": limit})
