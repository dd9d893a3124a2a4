"""``POST /v1/refunds``: a refund created with its key and its reservation on the charge, then driven by the
refund flow (idempotency rules: ``serve_app.idempotent``)."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.refund import RefundState, psp_refund_key
from serve_app import refunds_db as db
from serve_app.idempotent import Answer, IdempotentRequests, Operation
from serve_app.refund_flow import RefundFlow
from serve_app.refunds_db import Refund
from serve_app.schemas import RefundCreate


class RefundService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: RefundFlow, fee_bps: int
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow
        self._fee_bps = fee_bps

    async def create(self, merchant_id: str, key: str, body: RefundCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/refunds", body.model_dump(mode="json"))
        refund_id = new_id("re")
        fresh = Refund(
            id=refund_id,
            merchant_id=merchant_id,
            payment_id=body.charge,
            amount=0,  # decided against the charge, under its lock (as are the fee share and currency)
            fee_returned=0,
            currency="",
            state=RefundState.PENDING.value,
            psp_idempotency_key=psp_refund_key(refund_id),
            created_at=None,  # type: ignore[arg-type]  # set by the database
            idempotency_key=key,
            reason=body.reason,
            metadata=dict(body.metadata),
        )

        async def create(conn: AsyncConnection[Any]) -> Refund | None:
            return await db.insert_refund(
                conn, fresh, body.charge, fingerprint, self._requests.lease_ms, body.amount, self._fee_bps
            )

        async def resume(refund_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                refund = await db.load_refund(conn, refund_id)
            assert refund is not None
            return await self._flow.resume(refund)

        return await self._requests.run(
            merchant_id, key, fingerprint, Operation(create, self._flow.start, resume)
        )
