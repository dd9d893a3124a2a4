"""``POST /v1/payouts``: available funds leave for the merchant's bank, never more than the wallet holds.

A payout is inserted ``pending`` with its key, then debited through the merchant's wallet actor, which
checks the amount against its balance and reservations in one step (and the ledger refuses an overdraft
again, ``require_funds``): the posting moves it to ``payouts_in_transit`` and the payout to ``in_transit``.
A payout the balance does not cover leaves nothing behind (row, key), as any refused request.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from actors.wallet import InsufficientFunds
from ledger.postings import payout_posting
from payray.errors import DependencyFailure
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from serve_app.flows.idempotent import Answer, IdempotentRequests, Operation
from serve_app.stores import payouts as store
from serve_app.stores.payouts import Payout
from serve_app.wallets import WalletDirectory
from serve_app.wire.render import dumps
from serve_app.wire.schemas import PayoutCreate

log = logging.getLogger("payray.payout")


def payout_object(p: Payout) -> dict[str, Any]:
    return {
        "id": p.id,
        "object": "payout",
        "amount": p.amount.amount,
        "created": int(p.created_at.timestamp()),
        "currency": p.currency,
        "merchant": p.merchant_id,
        "status": p.state,
    }


class PayoutService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: PayoutFlow
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow

    async def create(self, merchant_id: str, key: str, body: PayoutCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/payouts", body.model_dump(mode="json"))
        payout_id, lease_ms = new_id("po"), self._requests.lease_ms

        async def create(conn: AsyncConnection[Any]) -> Payout | None:
            return await store.insert_payout(
                conn, payout_id, merchant_id, body.amount, body.currency, key, fingerprint, lease_ms
            )

        async def resume(payout_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                payout = await store.load_payout(conn, payout_id, merchant_id)
            assert payout is not None
            return await self._flow.pay(payout)

        operation = Operation(create, self._flow.pay, resume)
        return await self._requests.run(merchant_id, key, fingerprint, operation)


class PayoutFlow:
    """Debits a ``pending`` payout through the merchant's wallet; recovery runs it on one left behind."""

    def __init__(self, pool: AsyncConnectionPool[Any], wallets: WalletDirectory) -> None:
        self._pool = pool
        self._wallets = wallets

    async def pay(self, payout: Payout) -> tuple[int, bytes]:
        if payout.state != "pending":
            return 200, dumps(payout_object(payout))
        amount = payout.amount
        posting = payout_posting(payout.id, payout.merchant_id, amount)
        try:
            result = await self._wallets.debit(payout.merchant_id, posting, amount)
        except InsufficientFunds as exc:  # (Ray's wrapper of the wallet's error: answer with our own)
            async with self._pool.connection() as conn:
                await store.discard(conn, payout.id)
            raise InsufficientFunds(
                f"The available balance does not cover a payout of {amount}.", param="amount"
            ) from exc
        except Exception as exc:  # stays pending: a retry with its key resumes it (the posting is idempotent)
            log.warning("wallet debit failed", exc_info=True, extra={"payout_id": payout.id})
            raise DependencyFailure("The merchant's wallet is unavailable; retry with the same key.") from exc
        if result.error is not None or result.transaction_id is None:
            raise DependencyFailure(f"the ledger refused payout {payout.id}: {result.error}")
        done = replace(payout, state="in_transit", ledger_transaction_id=result.transaction_id)
        body = dumps(payout_object(done))
        async with self._pool.connection() as conn:
            stored = await store.mark_in_transit(
                conn, payout.id, result.transaction_id, body, payout_object(done)
            )
        if stored is None:  # another request finished it first
            async with self._pool.connection() as conn:
                current = await store.load_payout(conn, payout.id, payout.merchant_id)
            assert current is not None
            return 200, dumps(payout_object(current))
        return 200, body
