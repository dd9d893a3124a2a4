"""Disputes: opened and closed by the PSP's webhooks, booked through the merchant's wallet.

``opening`` (the hold is not booked yet) → ``open`` (the disputed amount sits in ``dispute_hold``) →
``closing_won``/``closing_lost`` (decided, not yet booked) → ``won`` (the hold returns to the balance) or
``lost`` (the PSP takes it). Every booking is a ledger posting keyed on the dispute id, so a step repeated
after a crash, or for a duplicate event, books nothing twice. A close that arrives before its open creates the
dispute and books the hold first: the order of events does not matter.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger.postings import dispute_hold_posting, dispute_loss_posting, dispute_release_posting
from payray.ids import new_id
from serve_app.stores import disputes as store
from serve_app.stores.disputes import Dispute
from serve_app.wallets import WalletDirectory

log = logging.getLogger("payray.dispute")

PUBLIC_STATUS = {"opening": "needs_response", "open": "needs_response", "closing_won": "won",
                 "closing_lost": "lost", "won": "won", "lost": "lost"}  # fmt: skip


def dispute_object(d: Dispute) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "dispute",
        "amount": d.amount.amount,
        "charge": d.payment_id,
        "created": int(d.created_at.timestamp()),
        "currency": d.currency,
        "psp_reference": d.psp_dispute_id,
        "reason": d.reason,
        "status": PUBLIC_STATUS[d.status],
    }


#: The event a dispute's booking announces as it reaches each state (Stripe's types); none for ``lost``, whose
#: funds were withdrawn and whose close was announced when the PSP decided it.
BOOKED_TOPICS = {"open": "charge.dispute.funds_withdrawn", "won": "charge.dispute.funds_reinstated"}


async def _announce(conn: AsyncConnection[Any], dispute: Dispute, topic: str) -> None:
    """The dispute's outbox row, on the connection (and in the transaction) that changed it."""
    await store.announce(conn, dispute.id, topic, dispute_object(dispute))


async def record_opened(
    conn: AsyncConnection[Any], payment_id: str, psp_dispute: dict[str, Any], closed_as: str | None = None
) -> Dispute | None:
    """Insert the dispute the PSP opened (``closed_as`` ``won``/``lost`` for a close seen before its open);
    ``None`` if it is already known."""
    status = f"closing_{closed_as}" if closed_as else "opening"
    opened = await store.insert_dispute(conn, new_id("du"), payment_id, psp_dispute, status)
    if opened is not None:
        await _announce(conn, opened, "charge.dispute.created")
        if closed_as:
            await _announce(conn, opened, "charge.dispute.closed")
    return opened


async def record_closed(
    conn: AsyncConnection[Any], payment_id: str, psp_dispute: dict[str, Any], outcome: str
) -> Dispute | None:
    """The PSP decided ``outcome`` (``won``/``lost``): the dispute is marked to be booked so; ``None`` if it
    was already decided. A close seen before its open creates the dispute already decided; one racing its
    open (delivered at the same time) waits for the open to commit and then decides it."""
    for _ in range(3):
        decided = await store.decide(conn, psp_dispute["id"], f"closing_{outcome}")
        if decided is not None:
            await _announce(conn, decided, "charge.dispute.closed")
            return decided
        known = await store.load_by_psp(conn, psp_dispute["id"])
        if known is not None and known.status not in ("opening", "open"):
            return None  # already decided (a duplicate or a second close)
        if known is None:
            opened = await record_opened(conn, payment_id, psp_dispute, closed_as=outcome)
            if opened is not None:
                return opened
        # an open committed between our statements: decide it on the next turn
    raise RuntimeError(f"dispute {psp_dispute['id']} keeps changing under its close")


class DisputeBooking:
    """Books a recorded dispute's money through the merchant's wallet, from whatever state it is in."""

    def __init__(self, pool: AsyncConnectionPool[Any], wallets: WalletDirectory) -> None:
        self._pool = pool
        self._wallets = wallets

    async def book(self, dispute: Dispute) -> Dispute:
        """Book what the dispute's state asks for; a failure leaves the state for recovery to finish."""
        amount = dispute.amount
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
        result = await self._wallets.post(posting.merchant_id, posting)
        if result.error is not None:
            raise RuntimeError(f"the ledger refused {posting.kind} {posting.external_ref}: {result.error}")

    async def _advance(self, dispute: Dispute, to: str) -> Dispute:
        async with self._pool.connection() as conn, conn.transaction():
            moved = await store.advance(conn, dispute, to)
            if moved is not None and to in BOOKED_TOPICS:
                await _announce(conn, moved, BOOKED_TOPICS[to])
        return moved or dispute
