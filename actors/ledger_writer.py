"""A ledger writer: group commit of postings into Postgres over one connection.

Callers ``await post(posting)`` concurrently. Postings queue up; a single flusher takes everything that
arrived within ``max_wait_ms`` of the oldest waiting posting (up to ``max_batch``) and writes it with one call
of ``ledger_post_batch`` in one database transaction, then answers every caller. While a batch is being
written the next one fills up, so under load batches grow and commits per posting fall.

Failure handling, in order:
  * a posting the database refuses is answered with its error; the rest of its batch commits;
  * a lost connection is re-opened and the whole batch retried (postings are idempotent on
    ``(kind, external_ref)``, so a batch that did commit before the loss is answered ``created=False``);
  * a transient failure (deadlock, serialization, lock timeout) retries the batch after a short backoff;
  * any other failure of the whole batch (for example at COMMIT) retries it in halves, down to single
    postings, so one bad posting never sinks the others;
  * a database unreachable for ``reconnect_timeout_s`` fails the batch's callers with ``DependencyFailure``.

``LedgerWriterActor`` is the same class as a Ray actor: named, detached, restarted on failure, with its
calls retried on the new incarnation (safe for the same idempotency reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import ray
from ray.actor import ActorClass

from ledger import store
from ledger.postings import Posting
from ledger.store import PostingResult
from payray.errors import DependencyFailure

log = logging.getLogger(__name__)

#: SQLSTATE classes and codes after which the same batch may simply be tried again.
TRANSIENT_SQLSTATES = ("40001", "40P01", "55P03", "57014")
TRANSIENT_ATTEMPTS = 5
PARTITION_CHECK_INTERVAL_S = 6 * 3600


@dataclass(slots=True)
class _Waiting:
    posting: Posting
    future: asyncio.Future[PostingResult]
    arrived: float


class LedgerWriter:
    """Group-commits postings for house-account shard ``shard``. Testable without Ray."""

    def __init__(
        self,
        database_url: str,
        shard: int,
        max_batch: int = 512,
        max_wait_ms: float = 2.0,
        *,
        reconnect_timeout_s: float = 30.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.database_url = database_url
        self.shard = shard
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.reconnect_timeout_s = reconnect_timeout_s
        self._queue: list[_Waiting] = []
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._partitions_checked_at = float("-inf")
        self._batches = 0
        self._postings = 0
        self._largest_batch = 0
        self._refused = 0
        self._retries = 0
        self._reconnects = 0
        self._splits = 0
        self._writing = 0

    async def post(self, posting: Posting) -> PostingResult:
        """Write ``posting`` (or find it already written) and return its result once committed."""
        if not isinstance(posting, Posting):
            raise TypeError(f"expected a Posting, got {type(posting).__name__}")
        loop = asyncio.get_running_loop()
        self._start()
        assert self._wakeup is not None and self._full is not None
        future: asyncio.Future[PostingResult] = loop.create_future()
        self._queue.append(_Waiting(posting, future, loop.time()))
        self._wakeup.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return await future

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]:
        """``post`` for each, in order: one actor call for a wallet's batch instead of one per posting."""
        return list(await asyncio.gather(*(self.post(p) for p in postings)))

    async def ready(self) -> bool:
        """True once connected (and the entry partitions exist); raises ``DependencyFailure`` otherwise."""
        self._start()
        await self._connection()
        return True

    async def stats(self) -> dict[str, float]:
        return {
            "shard": self.shard,
            "batches": self._batches,
            "postings": self._postings,
            "mean_batch_size": self._postings / self._batches if self._batches else 0.0,
            "largest_batch": self._largest_batch,
            "refused": self._refused,
            "retries": self._retries,
            "reconnects": self._reconnects,
            "splits": self._splits,
            "queued": len(self._queue),
            "writing": self._writing,
        }

    async def close(self) -> None:
        """Stop flushing and close the connection; postings still queued fail with ``DependencyFailure``."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._fail(self._queue, DependencyFailure("ledger writer closed"))
        self._queue = []
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- batching -------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._wakeup = asyncio.Event()
            self._full = asyncio.Event()
            self._connect_lock = asyncio.Lock()
            if self._queue:
                self._wakeup.set()
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if len(self._queue) < self.max_batch:
                remaining = self._queue[0].arrived + self.max_wait_s - loop.time()
                if remaining > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            if not self._queue:
                self._wakeup.clear()
                self._full.clear()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self._fail(batch, DependencyFailure("ledger writer stopped"))
                raise
            except DependencyFailure as exc:
                log.error("ledger batch failed: %s", exc, extra={"shard": self.shard, "postings": len(batch)})
                self._fail(batch, exc)
            except Exception as exc:  # never let the flusher die: answer the batch and go on
                log.exception("ledger batch failed", extra={"shard": self.shard, "postings": len(batch)})
                self._fail(batch, DependencyFailure(f"ledger write failed: {exc}"))

    async def _write(self, batch: list[_Waiting]) -> None:
        self._writing = len(batch)
        try:
            results = await self._post([w.posting for w in batch])
        finally:
            self._writing = 0
        self._batches += 1
        self._postings += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        for waiting, result in zip(batch, results, strict=True):
            if result.error is not None:
                self._refused += 1
            if not waiting.future.done():
                waiting.future.set_result(result)

    @staticmethod
    def _fail(batch: Sequence[_Waiting], exc: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(exc)

    # -- writing --------------------------------------------------------------------------------------------

    async def _post(self, postings: list[Posting]) -> list[PostingResult]:
        """Write one batch: reconnect and retry on connection loss, back off on transient errors, split
        on anything else."""
        loop = asyncio.get_running_loop()
        transient_attempts = 0
        lost_since: float | None = None
        while True:
            conn = await self._connection()
            try:
                return await store.post_batch_async(conn, postings, self.shard)
            except psycopg.Error as exc:
                if conn.closed or conn.broken or exc.sqlstate is None or exc.sqlstate.startswith("08"):
                    log.warning("ledger connection lost; retrying the batch", extra={"shard": self.shard})
                    await self._drop_connection()
                    self._reconnects += 1
                    self._retries += 1
                    now = loop.time()
                    lost_since = now if lost_since is None else lost_since
                    if now - lost_since > self.reconnect_timeout_s:
                        raise DependencyFailure(f"ledger connection keeps failing: {exc}") from exc
                    await asyncio.sleep(0.02 * random.random())
                    continue
                if exc.sqlstate in TRANSIENT_SQLSTATES and transient_attempts < TRANSIENT_ATTEMPTS:
                    transient_attempts += 1
                    self._retries += 1
                    await asyncio.sleep(0.01 * 2**transient_attempts * random.random())
                    continue
                if len(postings) == 1:
                    posting = postings[0]
                    return [
                        PostingResult(
                            external_ref=posting.external_ref,
                            transaction_id=None,
                            created=False,
                            error=str(exc).strip() or type(exc).__name__,
                            merchant_balances={},
                            error_code=exc.sqlstate,
                        )
                    ]
                log.warning(
                    "ledger batch refused as a whole; retrying in halves",
                    extra={"shard": self.shard, "postings": len(postings), "sqlstate": exc.sqlstate},
                )
                self._splits += 1
                middle = len(postings) // 2
                return await self._post(postings[:middle]) + await self._post(postings[middle:])

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if asyncio.get_running_loop().time() - self._partitions_checked_at > PARTITION_CHECK_INTERVAL_S:
                await self._ensure_partitions(conn)
            return conn
        assert self._connect_lock is not None
        async with self._connect_lock:
            if self._conn is not None and not self._conn.closed and not self._conn.broken:
                return self._conn
            self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout_s
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    application_name=f"payray-ledger-writer-{self.shard}",
                )
                await self._ensure_partitions(conn)
                return conn
            except psycopg.Error as exc:
                if loop.time() + delay > deadline:
                    raise DependencyFailure(f"ledger database unreachable: {exc}") from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Best effort: entries for a month without its partition still land in the default partition."""
        self._partitions_checked_at = asyncio.get_running_loop().time()
        try:
            created = await store.ensure_partitions_async(conn)
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise
            log.warning("could not create ledger entry partitions: %s", exc, extra={"shard": self.shard})
            return
        if created:
            log.info("created ledger entry partitions", extra={"shard": self.shard, "created": created})

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


#: Restarted forever, and calls in flight when it dies are retried on the new incarnation.
ACTOR_OPTIONS: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 1000}

LedgerWriterActor = cast("ActorClass[LedgerWriter]", ray.remote(**ACTOR_OPTIONS)(LedgerWriter))
