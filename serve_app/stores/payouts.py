"""SQL for payouts: created with their key, marked in transit once debited, discarded whole when refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from payray.money import Money
from payray.pages import Page
from serve_app.stores.answers import ANSWER_AND_ANNOUNCE, answer_params
from serve_app.stores.keys import CLAIM_KEY
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_all, fetch_one


@dataclass(frozen=True)
class Payout:
    id: str
    merchant_id: str
    amount: Money
    state: str
    created_at: datetime
    ledger_transaction_id: str | None = None

    @property
    def currency(self) -> str:
        return self.amount.currency


def _payout(*, amount: int, currency: str, **columns: Any) -> Payout:
    """A row as a record: its amount becomes ``Money`` here, and only here."""
    return Payout(amount=Money(amount, currency), **columns)


_COLUMNS = "id, merchant_id, amount, currency, state, created_at, ledger_transaction_id"

INSERT_WITH_KEY = f"""
WITH claimed AS ({CLAIM_KEY})
INSERT INTO payouts (id, merchant_id, amount, currency, state, idempotency_key)
SELECT %(id)s, %(merchant_id)s, %(amount)s, %(currency)s, 'pending', %(key)s FROM claimed
RETURNING {_COLUMNS}
"""

#: The debit is in the ledger: the payout is in transit, its answer stored, its event in the outbox.
MARK_IN_TRANSIT = f"""
WITH moved AS (
    UPDATE payouts SET state = 'in_transit', ledger_transaction_id = %(txn)s, updated_at = now()
    WHERE id = %(id)s AND state = 'pending'
    RETURNING {_COLUMNS}, idempotency_key
), {ANSWER_AND_ANNOUNCE}
SELECT {_COLUMNS} FROM moved
"""

#: A payout the balance did not cover: it never moved money, so it leaves nothing (row, key).
DISCARD = """
WITH gone AS (
    DELETE FROM payouts WHERE id = %(id)s AND state = 'pending' RETURNING merchant_id, idempotency_key
)
DELETE FROM idempotency_keys k USING gone
WHERE k.merchant_id = gone.merchant_id AND k.key = gone.idempotency_key
"""

SELECT_STUCK = f"""
SELECT {_COLUMNS} FROM payouts
WHERE state = 'pending' AND updated_at < now() - %(grace)s * interval '1 second'
ORDER BY updated_at LIMIT %(limit)s
"""

SELECT_PAYOUT = f"SELECT {_COLUMNS} FROM payouts WHERE id = %(id)s AND merchant_id = %(merchant_id)s"
LIST_PAYOUTS = newest_first("payouts", _COLUMNS)


async def _one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> Payout | None:
    return await fetch_one(conn, sql, params, _payout)


async def _all(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> list[Payout]:
    return await fetch_all(conn, sql, params, _payout)


async def insert_payout(
    conn: AsyncConnection[Any], payout_id: str, merchant_id: str, amount: int, currency: str,
    key: str, fingerprint: bytes, lease_ms: int,
) -> Payout | None:  # fmt: skip
    """Create the ``pending`` payout and claim its key; ``None`` if the key was already taken."""
    params = {
        "id": payout_id,
        "merchant_id": merchant_id,
        "key": key,
        "fingerprint": fingerprint,
        "lease_ms": lease_ms,
        "amount": amount,
        "currency": currency,
    }
    return await _one(conn, INSERT_WITH_KEY, params)


async def mark_in_transit(
    conn: AsyncConnection[Any], payout_id: str, transaction_id: str, body: bytes, event: dict[str, Any]
) -> Payout | None:
    """Move a ``pending`` payout in transit with its answer and outbox event; ``None`` if it already moved."""
    params = {
        "id": payout_id,
        "txn": transaction_id,
        **answer_params((200, body), ("payout.created", event)),
    }
    return await _one(conn, MARK_IN_TRANSIT, params)


async def discard(conn: AsyncConnection[Any], payout_id: str) -> None:
    await conn.execute(DISCARD, {"id": payout_id})


async def load_payout(conn: AsyncConnection[Any], payout_id: str, merchant_id: str) -> Payout | None:
    return await _one(conn, SELECT_PAYOUT, {"id": payout_id, "merchant_id": merchant_id})


async def stuck_payouts(conn: AsyncConnection[Any], grace_s: float, limit: int) -> list[Payout]:
    return await _all(conn, SELECT_STUCK, {"grace": grace_s, "limit": limit})


async def list_payouts(conn: AsyncConnection[Any], merchant_id: str, page: Page) -> list[Payout]:
    params = page_params(merchant_id, page)
    return await read_page(conn, LIST_PAYOUTS, page, params, lambda row: _payout(**row))
