"""Late successes: money a PSP moved for a payment that had already gone to another PSP, given back there.

A payment fails over only after a definite failure, so the PSP it left should hold nothing for it. Should
that PSP capture anyway (an answer that turned out wrong, a request it queued and ran late), the customer is
charged twice. It is found by that PSP's webhook, or by the recovery sweep, which asks each ended attempt's
PSP again for ``CHECK_DAYS``; what both miss, reconciliation files for review. Found, it is recorded once
(one row per PSP object), refunded at that PSP (an authorization released) under a key derived from the
row, and booked both ways under the row's id: a capture and its refund, so the ledger shows the money that
moved twice and its return.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger.postings import capture_posting, refund_posting
from payray.money import Money
from serve_app.flows.psp_routes import PspRoutes
from serve_app.stores import charges as charges_db
from serve_app.stores import late_successes as db
from serve_app.stores.charges import Charge
from serve_app.stores.late_successes import LateSuccess
from serve_app.wallets import WalletDirectory

log = logging.getLogger("payray.late_success")

#: How long after an attempt ended its PSP is still asked whether it captured after all, and how often.
CHECK_DAYS = 7
CHECK_EVERY_S = 3600.0


def is_late(payment: Charge, psp: str) -> bool:
    """Whether a success at ``psp`` is not the payment's own: the payment had left that PSP."""
    return payment.psp != psp


class LateSuccesses:
    def __init__(self, pool: AsyncConnectionPool[Any], psps: PspRoutes, wallets: WalletDirectory) -> None:
        self._pool = pool
        self._psps = psps
        self._wallets = wallets

    async def record(
        self,
        conn: AsyncConnection[Any],
        payment: Charge,
        psp: str,
        *,
        psp_reference: str,
        amount: int,
        currency: str,
        found_as: str,
        found_by: str,
    ) -> LateSuccess:
        """Record, on ``conn``, what ``psp`` holds for a payment that left it; ``reverse`` gives it back."""
        found = await db.record(
            conn,
            payment_id=payment.id,
            merchant_id=payment.merchant_id,
            psp=psp,
            psp_reference=psp_reference,
            amount=amount,
            currency=currency,
            found_as=found_as,
            found_by=found_by,
        )
        log.error(
            "late success at a PSP the payment had left",
            extra={"payment_id": payment.id, "psp": psp, "psp_reference": psp_reference, "late": found.id},
        )
        return found

    async def reverse(self, late: LateSuccess) -> bool:
        """Give it back at its PSP and book both movements; False while the PSP's answer is not a yes (the
        sweep asks again, under the same key)."""
        if late.state == "reversed":
            return True
        adapter = self._psps.adapter(late.psp)
        if late.found_as == "authorized":
            released = await adapter.cancel_authorization(
                payment_id=late.payment_id,
                psp_reference=late.psp_reference,
                idempotency_key=f"payray-late-cancel-{late.id}",
            )
            done, reference = released.status == "canceled", None  # nothing moved: nothing to book
        else:
            refunded = await adapter.refund(
                payment_id=late.payment_id,
                psp_reference=late.psp_reference,
                amount=late.amount,
                idempotency_key=f"payray-late-refund-{late.id}",
            )
            done, reference = refunded.status == "refunded", refunded.refund_reference
            done = done and await self._book(late)
        async with self._pool.connection() as conn:
            if done:
                await db.mark_reversed(conn, late.id, reference)
            else:
                await db.touch(conn, late.id)
        return done

    async def _book(self, late: LateSuccess) -> bool:
        """The capture the PSP made and its refund, both under the late success's id (each posting is
        idempotent on it, so a repeat books nothing twice)."""
        money, no_fee = Money(late.amount, late.currency), Money(0, late.currency)
        for posting in (
            capture_posting(late.id, late.merchant_id, money, no_fee),
            refund_posting(late.id, late.merchant_id, money, no_fee),
        ):
            try:
                result = await self._wallets.post(late.merchant_id, posting)
            except Exception:
                log.warning("booking a late success failed", exc_info=True, extra={"late": late.id})
                return False
            if result.error is not None:
                log.error("the ledger refused a late success", extra={"late": late.id, "error": result.error})
                return False
        return True

    async def sweep(self, grace_s: float, limit: int) -> Counter[str]:
        """Finish the late successes left half done, then ask ended attempts' PSPs whether they captured."""
        seen: Counter[str] = Counter()
        async with self._pool.connection() as conn:
            unfinished = await db.stuck(conn, grace_s, limit)
            due = await db.attempts_to_check(
                conn, days=CHECK_DAYS, grace_s=grace_s, every_s=CHECK_EVERY_S, limit=limit
            )
        for late in unfinished:
            seen["late_successes_found"] += 1
            seen["late_successes_reversed"] += await self._safely(self.reverse(late))
        for attempt_key, payment_id, psp in due:
            seen["ended_attempts_checked"] += 1
            found = await self._check(attempt_key, payment_id, psp)
            if found is not None and found.state == "found":
                seen["late_successes_found"] += 1
                seen["late_successes_reversed"] += await self._safely(self.reverse(found))
        return seen

    async def _check(self, attempt_key: str, payment_id: str, psp: str) -> LateSuccess | None:
        """Ask ``psp`` what it holds for the payment; a capture or authorization there is a late success."""
        try:
            found = await self._psps.adapter(psp).lookup(payment_id=payment_id)
        except Exception:
            log.warning(
                "asking an ended attempt's PSP failed", exc_info=True, extra={"payment_id": payment_id}
            )
            return None
        if found is not None and found.status == "unknown":
            return None  # asked again at the next sweep
        async with self._pool.connection() as conn, conn.transaction():
            await db.mark_checked(conn, attempt_key)
            if found is None or found.status not in ("captured", "authorized") or not found.psp_reference:
                return None
            payment = await charges_db.load_charge(conn, payment_id)
            if payment is None or not is_late(payment, psp):
                return None
            return await self.record(
                conn,
                payment,
                psp,
                psp_reference=found.psp_reference,
                amount=found.amount or payment.amount.amount,
                currency=found.currency or payment.currency,
                found_as=found.status,
                found_by="recovery",
            )

    @staticmethod
    async def _safely(reversal: Any) -> int:
        try:
            return int(await reversal)
        except Exception:
            log.warning("reversing a late success failed", exc_info=True)
            return 0
