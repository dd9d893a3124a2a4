"""Money-moving POSTs behind three idempotency layers: Redis, the Postgres key, the PSP's own key.

1. Redis claims the key in one script call (fast path); a taken key replays, conflicts or mismatches at once.
2. One Postgres statement inserts the key together with the object it names (a payment, a refund, a
   payout); a conflict means the key was used, and the durable record answers, whatever Redis said or
   forgot: replay a final answer, refuse a different request (422) or one still running (409), or take
   over and finish what an interrupted first request began.
3. What the object then does at the PSP carries a key derived from its id, so no retry moves money twice.

The endpoint supplies the object-specific parts; this module owns the rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidRequest
from serve_app.stores import keys as keys_db
from serve_app.stores.fast_keys import FastKeys, FastRecord

KEY_REUSED = "An Idempotency-Key can only be reused with the same parameters it was first used with."
KEY_IN_USE = "A request with this Idempotency-Key is still being processed; retry later."

#: 202 answers are never replayed: a retry asks Postgres for the object's current state instead.
PENDING = 202


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


T = TypeVar("T")


@dataclass(frozen=True)
class Operation(Generic[T]):
    """What one idempotent POST does; ``start`` and ``resume`` answer ``(status, body)``.

    ``create`` inserts the object and claims the key in one statement and returns the object, or ``None`` if
    the key was already taken; ``start`` runs the new object's flow; ``resume`` finishes, by its id, an
    object an earlier request with the same key created but did not finish.
    """

    create: Callable[[AsyncConnection[Any]], Awaitable[T | None]]
    start: Callable[[T], Awaitable[tuple[int, bytes]]]
    resume: Callable[[str], Awaitable[tuple[int, bytes]]]


class IdempotentRequests:
    def __init__(self, pool: AsyncConnectionPool[Any], fast_keys: FastKeys, lease_ms: int) -> None:
        self._pool = pool
        self._fast = fast_keys
        self.lease_ms = lease_ms

    async def run(self, merchant_id: str, key: str, fingerprint: bytes, operation: Operation[T]) -> Answer:
        fast = await self._fast.claim(merchant_id, key, fingerprint)
        if isinstance(fast, FastRecord):
            early = self._answer_from_fast(fast, fingerprint)
            if early is not None:
                return early
        try:
            (status, body), replayed = await self._create_or_recover(merchant_id, key, fingerprint, operation)
        except BaseException:
            # whatever we claimed in Redis is not the key's answer: Postgres decides the next attempt
            await self._fast.forget(merchant_id, key)
            raise
        # A pending object answers with its current state on retry, so Redis must send retries on.
        await self._fast.remember(merchant_id, key, fingerprint, status, body if status != PENDING else b"")
        return Answer(status, body, replayed)

    @staticmethod
    def _answer_from_fast(record: FastRecord, fingerprint: bytes) -> Answer | None:
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(KEY_REUSED)
        if record.status is not None and record.status != PENDING and record.body is not None:
            return Answer(record.status, record.body, replayed=True)
        # in flight or pending by Redis: Postgres knows better (recovery may have finished it meanwhile)
        return None

    async def _create_or_recover(
        self, merchant_id: str, key: str, fingerprint: bytes, operation: Operation[T]
    ) -> tuple[tuple[int, bytes], bool]:
        async with self._pool.connection() as conn:
            created = await operation.create(conn)
        if created is None:
            return await self._recover(merchant_id, key, fingerprint, operation)
        try:
            return await operation.start(created), False
        except BaseException:
            await self._release(merchant_id, key)
            raise

    async def _recover(
        self, merchant_id: str, key: str, fingerprint: bytes, operation: Operation[T]
    ) -> tuple[tuple[int, bytes], bool]:
        """The key exists in Postgres: replay its answer, refuse, or finish what its first request began."""
        async with self._pool.connection() as conn:
            record = await keys_db.load_key(conn, merchant_id, key)
            if record is None:  # discarded (a refused refund or payout) between our insert and this read
                raise IdempotencyKeyInUse("This Idempotency-Key is being released; retry.")
            if record.fingerprint != fingerprint:
                raise IdempotencyKeyReused(KEY_REUSED)
            if record.response_status is not None and record.response_status != PENDING:
                assert record.response_body is not None
                return (record.response_status, record.response_body), True
            object_id = await keys_db.take_over_key(conn, merchant_id, key, fingerprint, self.lease_ms)
            if object_id is None:
                raise IdempotencyKeyInUse(KEY_IN_USE)
        try:
            return await operation.resume(object_id), False
        finally:
            await self._release(merchant_id, key)

    async def _release(self, merchant_id: str, key: str) -> None:
        """Let a retry resume at once after a request that could not finish (its state is persisted)."""
        await self._fast.forget(merchant_id, key)
        async with self._pool.connection() as conn:
            await keys_db.release_key(conn, merchant_id, key)
