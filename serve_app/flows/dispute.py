"""Disputes: opened and closed by the PSP's webhooks, booked through the merchant's wallet.

``opening`` (the hold is not booked yet) → ``open`` (the disputed amount sits in ``dispute_hold``) →
``closing_won``/``closing_lost`` (decided, not yet booked) → ``won`` (the hold returns to the balance) or
``lost`` (the PSP takes it). Every booking is a ledger posting keyed on the dispute id, so a step repeated
after a crash, or for a duplicate event, books nothing twice. A close that arrives before its open creates the
dispute and books the hold first: the order of events does not matter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.postings import dispute_hold_posting, dispute_loss_posting, dispute_release_posting
from payray.ids import new_id
from payray.money import Money
from serve_app.wallets import WalletDirectory

log = logging.getLogger("payray.dispute")

COLUMNS = "id, merchant_id, payment_id, psp_dispute_id, amount, currency, reason, status, created_at"


@dataclass(frozen=True)
class Dispute:
    id: str
    merchant_id: str
    payment_id: str
    psp_dispute_id: str
    amount: int
    currency: str
    reason: str | None
    status: str
    created_at: datetime


#: Opened (or, for a close seen first, opened already decided); nothing if the PSP dispute is known.
OPEN = f"""
INSERT INTO disputes (id, merchant_id, payment_id, psp_dispute_id, amount, currency, reason, status)
SELECT %(id)s, p.merchant_id, p.id, %(psp_dispute_id)s, %(amount)s, %(currency)s, %(reason)s, %(status)s
FROM payments p WHERE p.id = %(payment_id)s
ON CONFLICT (psp_dispute_id) DO NOTHING
RETURNING {COLUMNS}
"""

DECIDE = f"""
UPDATE disputes SET status = %(status)s, updated_at = now()
WHERE psp_dispute_id = %(psp_dispute_id)s AND status IN ('opening', 'open')
RETURNING {COLUMNS}
"""

ADVANCE = f"""
UPDATE disputes SET status = %(to)s, updated_at = now() WHERE id = %(id)s AND status = %(from)s
RETURNING {COLUMNS}
"""

SELECT_ONE = f"SELECT {COLUMNS} FROM disputes WHERE id = %(id)s AND merchant_id = %(merchant_id)s"
SELECT_BY_PSP = f"SELECT {COLUMNS} FROM disputes WHERE psp_dispute_id = %(psp_dispute_id)s"
LIST = f"""
SELECT {COLUMNS} FROM disputes
WHERE merchant_id = %(merchant_id)s
  AND (%(after_id)s::text IS NULL OR (created_at, id) < (
        SELECT created_at, id FROM disputes WHERE id = %(after_id)s AND merchant_id = %(merchant_id)s))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""

PUBLIC_STATUS = {"opening": "needs_response", "open": "needs_response", "closing_won": "won",
                 "closing_lost": "lost", "won": "won", "lost": "lost"}  # fmt: skip


def dispute_object(d: Dispute) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "dispute",
        "amount": d.amount,
        "charge": d.payment_id,
        "created": int(d.created_at.timestamp()),
        "currency": d.currency,
        "psp_reference": d.psp_dispute_id,
        "reason": d.reason,
        "status": PUBLIC_STATUS[d.status],
    }


async def _one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> Dispute | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    return Dispute(**row) if row else None


ANNOUNCE = "INSERT INTO outbox (topic, aggregate_id, payload) VALUES (%(topic)s, %(id)s, %(payload)s)"


async def _announce(conn: AsyncConnection[Any], dispute: Dispute) -> None:
    """The dispute's outbox row, on the connection (and in the transaction) that changed it."""
    body = dispute_object(dispute)
    await conn.execute(
        ANNOUNCE, {"topic": f"dispute.{body['status']}", "id": dispute.id, "payload": Jsonb(body)}
    )


async def record_opened(
    conn: AsyncConnection[Any], payment_id: str, psp_dispute: dict[str, Any], closed_as: str | None = None
) -> Dispute | None:
    """Insert the dispute the PSP opened (``closed_as`` ``won``/``lost`` for a close seen before its open);
    ``None`` if it is already known."""
    params = {
        "id": new_id("du"),
        "payment_id": payment_id,
        "psp_dispute_id": psp_dispute["id"],
        "amount": int(psp_dispute["amount"]),
        "currency": str(psp_dispute["currency"]),
        "reason": psp_dispute.get("reason"),
        "status": f"closing_{closed_as}" if closed_as else "opening",
    }
    opened = await _one(conn, OPEN, params)
    if opened is not None:
        await _announce(conn, opened)
    return opened


async def record_closed(
    conn: AsyncConnection[Any], payment_id: str, psp_dispute: dict[str, Any], outcome: str
) -> Dispute | None:
    """The PSP decided ``outcome`` (``won``/``lost``): the dispute is marked to be booked so; ``None`` if it
    was already decided. A close seen before its open creates the dispute already decided; one racing its
    open (delivered at the same time) waits for the open to commit and then decides it."""
    decide = {"psp_dispute_id": psp_dispute["id"], "status": f"closing_{outcome}"}
    for _ in range(3):
        decided = await _one(conn, DECIDE, decide)
        if decided is not None:
            await _announce(conn, decided)
            return decided
        known = await _one(conn, SELECT_BY_PSP, {"psp_dispute_id": psp_dispute["id"]})
        if known is not None and known.status not in ("opening", "open"):
            return None  # already decided (a duplicate or a second close)
        if known is None:
            opened = await record_opened(conn, payment_id, psp_dispute, closed_as=outcome)
            if opened is not None:
                return opened
        # an open committed between our statements: decide it on the next turn
    raise RuntimeError(f"dispute {psp_dispute['id']} keeps changing under its close")


async def load_dispute(conn: AsyncConnection[Any], dispute_id: str, merchant_id: str) -> Dispute | None:
    return await _one(conn, SELECT_ONE, {"id": dispute_id, "merchant_id": merchant_id})


async def list_disputes(
    conn: AsyncConnection[Any], merchant_id: str, limit: int, starting_after: str | None
) -> list[Dispute]:
    params = {"merchant_id": merchant_id, "after_id": starting_after, "limit": limit}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LIST, params)
        return [Dispute(**row) for row in await cur.fetchall()]


class DisputeBooking:
    """Books a recorded dispute's money through the merchant's wallet, from whatever state it is in."""

    def __init__(self, pool: AsyncConnectionPool[Any], wallets: WalletDirectory) -> None:
        self._pool = pool
        self._wallets = wallets

    async def book(self, dispute: Dispute) -> Dispute:
        """Book what the dispute's state asks for; a failure leaves the state for recovery to finish."""
        amount = Money(dispute.amount, dispute.currency)
        try:
            if dispute.status in ("opening", "closing_won", "closing_lost"):
                await self._post(dispute_hold_posting(dispute.id, dispute.merchant_id, amount))
            if dispute.status == "opening":
                return await self._advance(dispute, "open")
            if dispute.status == "closing_won":
                await self._post(dispute_release_posting(dispute.id, dispute.merchant_id, amount))
                return await self._advance(dispute, "won")
            if dispute.status == "closing_lost":
                await self._post(dispute_loss_posting(dispute.id, dispute.merchant_id, amount))
                return await self._advance(dispute, "lost")
        except Exception:
            log.warning("dispute not booked yet", exc_info=True, extra={"dispute_id": dispute.id})
        return dispute

    async def _post(self, posting: Any) -> None:
        result = await self._wallets.apply(posting.merchant_id, posting)
        if result.error is not None:
            raise RuntimeError(f"the ledger refused {posting.kind} {posting.external_ref}: {result.error}")

    async def _advance(self, dispute: Dispute, to: str) -> Dispute:
        async with self._pool.connection() as conn, conn.transaction():
            moved = await _one(conn, ADVANCE, {"id": dispute.id, "from": dispute.status, "to": to})
            if moved is not None and to in ("won", "lost"):
                await _announce(conn, moved)
        return moved or dispute
