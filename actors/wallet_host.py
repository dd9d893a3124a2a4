"""A wallet host: the wallets of many merchants in one process, and the ledger writer that books them.

Wallets are virtual actors (as Orleans grains and Akka sharding entities are): a fixed pool of hosts, each a
Ray actor, and a merchant's wallet lives in host ``SlotMap.host_of(merchant)``. The host creates a wallet on
its merchant's first call, loading it from the ledger (many first calls at once share one indexed read), and
passivates wallets that are idle or beyond the cache's bound (``payray.passivation``), never one that is
busy. Memory therefore follows the merchants active now, not every merchant that ever charged.

The host writes the ledger itself, with its own ``LedgerWriter`` (group commit, house-account shard = host
index): a merchant's postings are its wallet's to make, so a charge's hot path is one actor call
(replica → host) with no nested call, and every merchant of the host shares its batches, which therefore do
not shrink as merchants spread out.

Ray restarts a dead host (``max_restarts=-1``) and retries the calls it had in flight on the new incarnation
(``max_task_retries=-1``): every method is idempotent (postings are keyed), and the new host rebuilds each
wallet from Postgres on first use. Ray does not promise one live copy during a restart; Postgres stays the
arbiter (idempotent postings, ``require_funds`` on debits), so two copies can cause a refusal, never a double
spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any, cast

import ray
from psycopg_pool import AsyncConnectionPool
from ray.actor import ActorClass, ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.ledger_writer import LedgerWriter
from actors.wallet import Wallet
from ledger import store
from ledger.postings import Posting
from ledger.store import MerchantBalance, PostingResult
from payray.batching import NaturalBatcher
from payray.money import Money
from payray.passivation import WalletCache


class LedgerReads:
    """The host's reads of the ledger, over a small pool of its own. Balance loads that arrive while one is
    running travel together in the next (one ``= ANY`` read for many merchants)."""

    def __init__(self, database_url: str, application_name: str) -> None:
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={"autocommit": True, "application_name": application_name},
        )
        self._opened = False
        self._loads: NaturalBatcher[str, dict[str, MerchantBalance]] = NaturalBatcher(self._load)
        self.reads = 0

    async def merchant_balances(self, merchant_id: str) -> dict[str, MerchantBalance]:
        return await self._loads.submit(merchant_id)

    async def transaction_for(self, kind: str, external_ref: str) -> str | None:
        async with await self._connection() as conn:
            return await store.transaction_for_async(conn, kind, external_ref)

    async def _load(self, merchant_ids: list[str]) -> list[dict[str, MerchantBalance]]:
        async with await self._connection() as conn:
            found = await store.merchants_balances_async(conn, sorted(set(merchant_ids)))
        self.reads += 1
        return [found[m] for m in merchant_ids]

    async def _connection(self) -> Any:
        if not self._opened:
            self._opened = True
            await self._pool.open(wait=False)
        return self._pool.connection(timeout=10)

    async def close(self) -> None:
        await self._pool.close()


class WalletHost:
    """The wallets of the merchants whose slots map to host ``index``. Testable without Ray."""

    def __init__(
        self,
        database_url: str,
        index: int,
        cache_size: int = 100_000,
        idle_s: float = 600.0,
        *,
        max_wait_ms: float = 2.0,
    ) -> None:
        self.index = index
        self._writer = LedgerWriter(database_url, shard=index, max_wait_ms=max_wait_ms)
        self._reads = LedgerReads(database_url, f"payray-wallet-host-{index}")
        self._wallets: WalletCache[Wallet] = WalletCache(cache_size, idle_s, busy=lambda w: w.busy)
        self._sweeper: asyncio.Task[None] | None = None
        self._created = 0
        self._calls = 0

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]:
        """Post movements into merchants' balances (captures, disputes released), any merchants of this host
        in one call; one result per posting, in order. Every wallet's postings join the writer's batch."""
        self._calls += 1
        by_merchant: defaultdict[str, list[int]] = defaultdict(list)
        for i, posting in enumerate(postings):
            by_merchant[_merchant_of(posting)].append(i)

        async def post(merchant_id: str, indices: list[int]) -> list[PostingResult]:
            with self._holding(merchant_id) as wallet:
                return await wallet.post_many([postings[i] for i in indices])

        answers = await asyncio.gather(*(post(m, idx) for m, idx in by_merchant.items()))
        results: list[PostingResult | None] = [None] * len(postings)
        for indices, answered in zip(by_merchant.values(), answers, strict=True):
            for i, result in zip(indices, answered, strict=True):
                results[i] = result
        return cast(list[PostingResult], results)

    async def debit(self, posting: Posting, amount: Money) -> PostingResult:
        """Move ``amount`` out of the merchant's balance if its wallet holds it, else refuse."""
        self._calls += 1
        with self._holding(_merchant_of(posting)) as wallet:
            return await wallet.debit(posting, amount)

    async def balances(self, merchant_id: str) -> dict[str, int]:
        self._calls += 1
        with self._holding(merchant_id) as wallet:
            return await wallet.balances()

    async def resync(self, merchant_id: str) -> dict[str, int]:
        """Rebuild the merchant's wallet from the ledger now (an operator's repair, as a restart does)."""
        with self._holding(merchant_id) as wallet:
            return await wallet.resync()

    async def held_balances(self) -> dict[str, dict[str, int]]:
        """The balances of every wallet in memory but the busy ones (between two ledger states)."""
        return {
            wallet.merchant_id: await wallet.balances()
            for wallet in self._wallets.values()
            if not wallet.busy
        }

    async def ready(self) -> bool:
        """True once the writer is connected; raises ``DependencyFailure`` otherwise."""
        self._start_sweeping()
        return await self._writer.ready()

    async def stats(self) -> dict[str, float]:
        return {
            "index": self.index,
            "wallets": len(self._wallets),
            "wallets_created": self._created,
            "passivated": self._wallets.passivated,
            "calls": self._calls,
            "balance_reads": self._reads.reads,
            **{f"writer_{k}": v for k, v in (await self._writer.stats()).items()},
        }

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._writer.close()
        await self._reads.close()

    # -- internals ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _holding(self, merchant_id: str) -> Iterator[Wallet]:
        """The merchant's wallet, loaded into the cache if need be and kept there for the block.

        Found (or created) and marked in one synchronous step, so no eviction can come between the two and
        leave a second wallet for the merchant in this host."""
        now = time.monotonic()
        wallet = self._wallets.get(merchant_id, now)
        created = wallet is None
        if wallet is None:
            self._start_sweeping()
            wallet = Wallet(merchant_id, self._writer, self._reads)
            self._created += 1
        wallet.callers += 1
        if created:
            self._wallets.put(merchant_id, wallet, now)
        try:
            yield wallet
        finally:
            wallet.callers -= 1
            if len(self._wallets) > self._wallets.capacity:
                self._wallets.trim(time.monotonic())

    def _start_sweeping(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        interval = min(self._wallets.idle_s / 2, 30.0)
        while True:
            await asyncio.sleep(interval)
            self._wallets.sweep(time.monotonic())


def _merchant_of(posting: Posting) -> str:
    if not posting.merchant_id:
        raise ValueError(f"{posting.kind} {posting.external_ref} has no merchant: no wallet can post it")
    return posting.merchant_id


#: Restarted forever, and calls in flight when it dies are retried on the new incarnation.
HOST_OPTIONS: dict[str, Any] = {
    "max_restarts": -1,
    "max_task_retries": -1,
    "max_concurrency": 10_000,
    "num_cpus": 0,
}
WalletHostActor = cast("ActorClass[WalletHost]", ray.remote(**HOST_OPTIONS)(WalletHost))


def host_name(index: int) -> str:
    return f"wallet_host:{index}"


def get_or_create_hosts(
    database_url: str, count: int, namespace: str, cache_size: int, idle_s: float
) -> list[ActorHandle]:
    """Handles to the named, detached hosts ``wallet_host:0 … count-1``, created if missing."""
    if count < 1:
        raise ValueError("count must be at least 1")
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    handles: Sequence[Any] = [
        WalletHostActor.options(
            name=host_name(i),
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy=_dealt(i, nodes),
        ).remote(database_url, i, cache_size, idle_s)
        for i in range(count)
    ]
    return list(handles)


def _dealt(index: int, nodes: list[str]) -> Any:
    """Host ``index`` goes to the nodes in turn, as machines would share them; softly, so a host whose node
    is lost restarts on another."""
    if len(nodes) < 2:
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=True)
