"""``POST /v1/charges`` behind its three idempotency layers: Redis, the Postgres key, the PSP's key.

1. Redis ``SET NX`` claims the key (fast path); a taken key replays, conflicts or mismatches at once.
2. One Postgres statement inserts the key and the payment together; a conflict means the key was used,
   and the durable record answers, whatever Redis said or forgot.
3. The PSP call carries a key derived from the payment id, so no retry can capture twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from payray.charge import ChargeEvent, ChargeState, psp_idempotency_key, step
from payray.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidRequest
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from serve_app import payments_db as db
from serve_app.charge_flow import ChargeFlow, Reply
from serve_app.fast_keys import FastKeys, FastRecord
from serve_app.payments_db import Payment
from serve_app.schemas import ChargeCreate

KEY_REUSED = "An Idempotency-Key can only be reused with the same parameters it was first used with."
KEY_IN_USE = "A request with this Idempotency-Key is still being processed; retry later."


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    replayed: bool = False


def check_idempotency_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise InvalidRequest(
            "POST requests that move money need an Idempotency-Key header.",
            code="idempotency_key_missing",
            param="Idempotency-Key",
        )
    if len(raw) > 255 or not all(32 <= ord(c) < 127 for c in raw):
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            code="idempotency_key_invalid",
            param="Idempotency-Key",
        )
    return raw


class ChargeService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], fast_keys: FastKeys, flow: ChargeFlow, lease_ms: int
    ) -> None:
        self._pool = pool
        self._fast = fast_keys
        self._flow = flow
        self._lease_ms = lease_ms

    async def create(self, merchant_id: str, key: str, body: ChargeCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/charges", body.model_dump(mode="json"))
        fast = await self._fast.claim(merchant_id, key, fingerprint)
        if isinstance(fast, FastRecord):
            early = self._answer_from_fast(fast, fingerprint)
            if early is not None:
                return early
        reply, replayed = await self._create_or_recover(merchant_id, key, fingerprint, body)
        if reply.status != 202:
            await self._fast.remember(merchant_id, key, fingerprint, reply.status, reply.body)
        else:
            # A pending charge answers with its current state on retry, so Redis must send retries on.
            await self._fast.remember(merchant_id, key, fingerprint, 202, b"")
        return Answer(reply.status, reply.body, replayed)

    @staticmethod
    def _answer_from_fast(record: FastRecord, fingerprint: bytes) -> Answer | None:
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(KEY_REUSED)
        if record.status is None:
            raise IdempotencyKeyInUse(
                "A request with this Idempotency-Key is still being processed; retry later."
            )
        if record.status != 202 and record.body is not None:
            return Answer(record.status, record.body, replayed=True)
        return None  # pending: Postgres knows the charge's current state

    async def _create_or_recover(
        self, merchant_id: str, key: str, fingerprint: bytes, body: ChargeCreate
    ) -> tuple[Reply, bool]:
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
        async with self._pool.connection() as conn:
            inserted = await db.insert_payment(
                conn, fresh.evolve(state=submit.target.value), fingerprint, [submit], self._lease_ms
            )
        if inserted is None:
            return await self._recover(merchant_id, key, fingerprint)
        try:
            return await self._flow.start(inserted), False
        except BaseException:
            await self._release(merchant_id, key)
            raise

    async def _recover(self, merchant_id: str, key: str, fingerprint: bytes) -> tuple[Reply, bool]:
        """The key exists in Postgres: replay its answer, refuse, or finish what its first request began."""
        async with self._pool.connection() as conn:
            record = await db.load_key(conn, merchant_id, key)
            if record is None:  # pragma: no cover - keys are never deleted within their TTL
                raise IdempotencyKeyInUse("This Idempotency-Key is being released; retry.")
            if record.fingerprint != fingerprint:
                raise IdempotencyKeyReused(KEY_REUSED)
            if record.response_status is not None and record.response_status != 202:
                assert record.response_body is not None
                payment = await db.load_payment(conn, record.payment_id or "")
                assert payment is not None
                return Reply(record.response_status, record.response_body, payment), True
            payment_id = await db.take_over_key(conn, merchant_id, key, fingerprint, self._lease_ms)
            if payment_id is None:
                raise IdempotencyKeyInUse(
                    "A request with this Idempotency-Key is still being processed; retry later."
                )
            payment = await db.load_payment(conn, payment_id)
        assert payment is not None
        try:
            return await self._flow.resume(payment), False
        finally:
            await self._release(merchant_id, key)

    async def _release(self, merchant_id: str, key: str) -> None:
        """Let a retry resume at once after a request that could not finish (its state is persisted)."""
        await self._fast.forget(merchant_id, key)
        async with self._pool.connection() as conn:
            await db.release_key(conn, merchant_id, key)
