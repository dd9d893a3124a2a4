"""``POST /v1/payouts``: available funds leave for the merchant's bank, never more than the wallet holds.

A payout is inserted ``pending`` with its key, then debited through the merchant's wallet actor, which
checks the amount against its balance and reservations in one step (and the ledger refuses an overdraft
again, ``require_funds``): the posting moves it to ``payouts_in_transit`` and the payout to ``in_transit``.
A payout the balance does not cover leaves nothing behind (row, key), as any refused request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from actors.wallet import InsufficientFunds
from ledger.postings import payout_posting
from payray.errors import DependencyFailure
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.money import Money
from serve_app.flows.idempotent import Answer, IdempotentRequests, Operation
from serve_app.stores.keys import CLAIM_KEY
from serve_app.wallets import WalletDirectory
from serve_app.wire.render import dumps
from serve_app.wire.schemas import PayoutCreate

log = logging.getLogger("payray.payout")


@dataclass(frozen=True)
class Payout:
    id: str
    merchant_id: str
    amount: int
    currency: str
    state: str
    created_at: datetime
    ledger_transaction_id: str | None = None


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
), answered AS (
    UPDATE idempotency_keys k SET response_status = 200, response_body = %(body)s, completed_at = now(),
           locked_until = NULL
    FROM moved WHERE k.merchant_id = moved.merchant_id AND k.key = moved.idempotency_key
), announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload)
    SELECT 'payout.in_transit', moved.id, %(event)s FROM moved
)
SELECT {_COLUMNS} FROM moved
"""

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
LIST_PAYOUTS = f"""
SELECT {_COLUMNS} FROM payouts
WHERE merchant_id = %(merchant_id)s
  AND (%(after_id)s::text IS NULL OR (created_at, id) < (
        SELECT created_at, id FROM payouts WHERE id = %(after_id)s AND merchant_id = %(merchant_id)s))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""


def payout_object(p: Payout) -> dict[str, Any]:
    return {
        "id": p.id,
        "object": "payout",
        "amount": p.amount,
        "created": int(p.created_at.timestamp()),
        "currency": p.currency,
        "merchant": p.merchant_id,
        "status": p.state,
    }


async def _one(conn: AsyncConnection[Any], sql: str, params: dict[str, Any]) -> Payout | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    return Payout(**row) if row else None


async def load_payout(conn: AsyncConnection[Any], payout_id: str, merchant_id: str) -> Payout | None:
    return await _one(conn, SELECT_PAYOUT, {"id": payout_id, "merchant_id": merchant_id})


async def stuck_payouts(conn: AsyncConnection[Any], grace_s: float, limit: int) -> list[Payout]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_STUCK, {"grace": grace_s, "limit": limit})
        return [Payout(**row) for row in await cur.fetchall()]


async def list_payouts(
    conn: AsyncConnection[Any], merchant_id: str, limit: int, starting_after: str | None
) -> list[Payout]:
    params = {"merchant_id": merchant_id, "after_id": starting_after, "limit": limit}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LIST_PAYOUTS, params)
        return [Payout(**row) for row in await cur.fetchall()]


class PayoutService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: PayoutFlow
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow

    async def create(self, merchant_id: str, key: str, body: PayoutCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/payouts", body.model_dump(mode="json"))
        params = {
            "id": new_id("po"),
            "merchant_id": merchant_id,
            "key": key,
            "fingerprint": fingerprint,
            "lease_ms": self._requests.lease_ms,
            "amount": body.amount,
            "currency": body.currency,
        }

        async def create(conn: AsyncConnection[Any]) -> Payout | None:
            return await _one(conn, INSERT_WITH_KEY, params)

        async def resume(payout_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                payout = await load_payout(conn, payout_id, merchant_id)
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
        amount = Money(payout.amount, payout.currency)
        posting = payout_posting(payout.id, payout.merchant_id, amount)
        try:
            result = await self._wallets.debit(payout.merchant_id, posting, amount)
        except InsufficientFunds as exc:  # (Ray's wrapper of the wallet's error: answer with our own)
            async with self._pool.connection() as conn:
                await conn.execute(DISCARD, {"id": payout.id})
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
        params = {
            "id": payout.id,
            "txn": result.transaction_id,
            "body": body,
            "event": Jsonb(payout_object(done)),
        }
        async with self._pool.connection() as conn:
            stored = await _one(conn, MARK_IN_TRANSIT, params)
        if stored is None:  # another request finished it first
            async with self._pool.connection() as conn:
                current = await load_payout(conn, payout.id, payout.merchant_id)
            assert current is not None
            return 200, dumps(payout_object(current))
        return 200, body
