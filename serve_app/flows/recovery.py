"""Recovery: find what no request is driving any more and drive it to a terminal state.

A request can die anywhere (a replica killed, a machine lost, a client gone after a 202), and every flow
persists its state before each step, so what it leaves behind is a row in a non-terminal state that nobody
updates. A sweep takes every charge, refund, payout and dispute that has sat in such a state for longer
than ``grace_s`` (longer than any live request waits) and runs the same flow code on it: a charge that
never heard from the PSP is looked up there by its metadata, never captured again; every other step is
idempotent (ledger postings keyed on the object's id, PSP calls with keys derived from it), so a sweep racing
a live request, or another sweep, changes nothing twice. The sweep also looks for late successes at the PSPs
payments failed over from (``late_success``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from psycopg_pool import AsyncConnectionPool

from payray.charge import AUTHORIZATION_DAYS, RESTING_STATES, TERMINAL_STATES
from payray.errors import ClientError
from serve_app.flows.charge import ChargeFlow
from serve_app.flows.dispute import DisputeBooking
from serve_app.flows.late_success import LateSuccesses
from serve_app.flows.payout import PayoutFlow
from serve_app.flows.refund import RefundFlow
from serve_app.stores import charges as charges_db
from serve_app.stores import disputes, payouts
from serve_app.stores import refunds as refunds_db
from serve_app.stores.disputes import Dispute

log = logging.getLogger("payray.recovery")

STUCK_PAYMENTS = """
SELECT id FROM payments
WHERE state NOT IN ('succeeded', 'declined', 'failed', 'compensated', 'requires_capture', 'canceled')
  AND updated_at < now() - %(grace)s * interval '1 second'
ORDER BY updated_at LIMIT %(limit)s
"""
#: Authorizations nobody captured in time: released, as the PSP would let them go.
EXPIRED_AUTHORIZATIONS = """
SELECT id FROM payments
WHERE state = 'requires_capture' AND created_at < now() - %(days)s * interval '1 day'
ORDER BY created_at LIMIT %(limit)s
"""
STUCK_REFUNDS = """
SELECT id FROM refunds
WHERE state NOT IN ('succeeded', 'failed') AND updated_at < now() - %(grace)s * interval '1 second'
ORDER BY updated_at LIMIT %(limit)s
"""


class Recovery:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        charges: ChargeFlow,
        refund_flow: RefundFlow,
        payout_flow: PayoutFlow,
        booking: DisputeBooking,
        late: LateSuccesses,
    ) -> None:
        self._late = late
        self._pool = pool
        self._charges = charges
        self._refunds = refund_flow
        self._payouts = payout_flow
        self._booking = booking

    async def sweep(self, grace_s: float, limit: int = 500) -> dict[str, int]:
        """One pass over everything stuck for ``grace_s``; counts of what it found and what it finished."""
        seen: Counter[str] = Counter()
        params = {"grace": grace_s, "limit": limit}
        async with self._pool.connection() as conn:
            payment_ids = [r[0] for r in await (await conn.execute(STUCK_PAYMENTS, params)).fetchall()]
            refund_ids = [r[0] for r in await (await conn.execute(STUCK_REFUNDS, params)).fetchall()]
            stuck_disputes = await disputes.stuck_disputes(conn, grace_s, limit)
            stuck_payouts = await payouts.stuck_payouts(conn, grace_s, limit)
            expiring = {"days": AUTHORIZATION_DAYS, "limit": limit}
            expired = [r[0] for r in await (await conn.execute(EXPIRED_AUTHORIZATIONS, expiring)).fetchall()]
        for payment_id in payment_ids:
            await self._one("payments", seen, self._payment(payment_id))
        for payment_id in expired:
            await self._one("authorizations_expired", seen, self._expire(payment_id))
        for refund_id in refund_ids:
            await self._one("refunds", seen, self._refund(refund_id))
        for dispute in stuck_disputes:
            await self._one("disputes", seen, self._dispute(dispute))
        for payout in stuck_payouts:
            await self._one("payouts", seen, self._payout(payout))
        seen.update(await self._late.sweep(grace_s, limit))
        if seen:
            log.info("recovery sweep", extra={"counts": dict(seen)})
        return dict(seen)

    async def _one(self, kind: str, seen: Counter[str], work: Any) -> None:
        seen[f"{kind}_found"] += 1
        try:
            if await work:
                seen[f"{kind}_finished"] += 1
        except ClientError as exc:  # refused for good (a refund or payout the balance does not cover)
            seen[f"{kind}_finished"] += 1
            log.info("recovery: refused for good: %s", exc.message)
        except Exception:
            seen[f"{kind}_failed"] += 1
            log.warning("recovery could not finish a %s yet", kind[:-1], exc_info=True)

    async def _payment(self, payment_id: str) -> bool:
        async with self._pool.connection() as conn:
            charge = await charges_db.load_charge(conn, payment_id)
        if charge is None:
            return False
        reply = await self._charges.recover(charge)
        return reply.charge.state in TERMINAL_STATES | RESTING_STATES

    async def _expire(self, payment_id: str) -> bool:
        async with self._pool.connection() as conn:
            charge = await charges_db.load_charge(conn, payment_id)
        if charge is None or charge.state != "requires_capture":
            return False
        reply = await self._charges.release(charge, "expired")
        return reply.charge.state == "canceled"

    async def _refund(self, refund_id: str) -> bool:
        async with self._pool.connection() as conn:
            refund = await refunds_db.load_refund(conn, refund_id)
        if refund is None:
            return False
        status, _ = await self._refunds.resume(refund)  # 200 once settled; a discarded one raised
        return status == 200

    async def _dispute(self, dispute: Dispute) -> bool:
        booked = await self._booking.book(dispute)
        return booked.status in ("open", "won", "lost")

    async def _payout(self, payout: payouts.Payout) -> bool:
        status, _ = await self._payouts.pay(payout)
        return status == 200
