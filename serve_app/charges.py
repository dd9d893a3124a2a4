"""``POST /v1/charges``: a payment created with its key, then driven by the charge flow.

The idempotency rules (Redis, the Postgres key, the PSP's key) are ``serve_app.idempotent``'s.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.charge import ChargeEvent, ChargeState, psp_idempotency_key, step
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from serve_app import payments_db as db
from serve_app.charge_flow import ChargeFlow
from serve_app.idempotent import Answer, IdempotentRequests, Operation
from serve_app.payments_db import Payment
from serve_app.schemas import ChargeCreate


class ChargeService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: ChargeFlow
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow

    async def create(self, merchant_id: str, key: str, body: ChargeCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/charges", body.model_dump(mode="json"))
        payment_id = new_id("ch")
        fresh = Payment(
            id=payment_id,
            merchant_id=merchant_id,
            amount=body.amount,
            currency=body.currency,
            payment_method=body.payment_method,
            state=ChargeState.CREATED.value,
            idempotency_key=key,
            psp_idempotency_key=psp_idempotency_key(payment_id),
            created_at=None,  # type: ignore[arg-type]  # set by the database
            description=body.description,
            metadata=dict(body.metadata),
            customer=body.customer,
        )
        submit = step(ChargeState.CREATED, ChargeEvent.SUBMIT)

        async def create(conn: AsyncConnection[Any]) -> Payment | None:
            pending = fresh.evolve(state=submit.target.value)
            return await db.insert_payment(conn, pending, fingerprint, [submit], self._requests.lease_ms)

        async def start(payment: Payment) -> tuple[int, bytes]:
            reply = await self._flow.start(payment)
            return reply.status, reply.body

        async def resume(payment_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                payment = await db.load_payment(conn, payment_id)
            assert payment is not None
            reply = await self._flow.resume(payment)
            return reply.status, reply.body

        return await self._requests.run(merchant_id, key, fingerprint, Operation(create, start, resume))
