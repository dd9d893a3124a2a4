"""One wallet per merchant: the single writer of its balance, rebuilt from the ledger.

The wallet answers "may this payout or refund happen?" from memory, without a database round trip, and
posts every movement of the merchant's money through the merchant's ledger writer. Its state is only ever
taken from Postgres: at start (and after any failure) from ``account_balances``, and after each posting from
the balance the ledger returns with it. Every balance carries the version of its row, and the wallet keeps the
highest version it has seen, so results arriving out of order or twice change nothing.

Concurrency: calls interleave at their ``await`` points. A debit checks ``available - reserved >= amount`` and
reserves the amount in one synchronous step, then posts; the reservation is released in the same step that
applies the posting's resulting balance, so no interleaving lets two debits spend the same funds. Debit
postings also carry ``require_funds``, so Postgres refuses an overdraft even if a wallet's view were stale
(for example a debit of a previous incarnation still in flight when the actor restarted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Protocol

import psycopg
import ray
from ray.actor import ActorHandle

from actors.ledger_pool import writer_for
from actors.ledger_writer import ACTOR_OPTIONS
from ledger import store
from ledger.postings import Posting
from ledger.store import MerchantBalance, PostingResult
from payray.errors import ClientError, DependencyFailure, PayrayError
from payray.money import Money

log = logging.getLogger(__name__)


class InsufficientFunds(ClientError):
    """The merchant's available balance does not cover the payout or refund."""

    code = "balance_insufficient"


class Ledger(Protocol):
    async def post(self, posting: Posting) -> PostingResult: ...

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]: ...


class Wallet:
    """The balances of one merchant. Testable without Ray: pass any ``Ledger``."""

    def __init__(self, merchant_id: str, database_url: str, ledger: Ledger) -> None:
        self.merchant_id = merchant_id
        self._database_url = database_url
        self._ledger = ledger
        self._balances: dict[str, MerchantBalance] = {}
        self._reserved: defaultdict[str, int] = defaultdict(int)
        self._loaded = False
        self._load_lock = asyncio.Lock()
        # one database connection at a time per wallet, however many calls need one at once
        self._database_lock = asyncio.Lock()

    async def credit(self, posting: Posting) -> PostingResult:
        """Post a movement into the merchant's balance (a capture, a dispute released)."""
        self._check_owner(posting)
        await self._ensure_loaded()
        return await self._post(posting)

    async def credit_many(self, postings: list[Posting]) -> list[PostingResult]:
        """``credit`` for each, in order, in one call to the ledger: what callers batch stays batched."""
        for posting in postings:
            self._check_owner(posting)
        await self._ensure_loaded()
        return await self._through_ledger(self._ledger.post_many(postings))

    async def debit(self, posting: Posting, amount: Money) -> PostingResult:
        """Post a movement out of the merchant's balance if ``amount`` is available, else refuse it.

        Raises ``InsufficientFunds`` when ``available - reserved < amount``.

        Idempotent: a debit already in the ledger (a retried call) answers ``created=False`` even when the
        balance no longer covers it.
        """
        self._check_owner(posting)
        if not amount.is_positive():
            raise ValueError(f"debit amount must be positive, got {amount.amount}")
        await self._ensure_loaded()
        currency = amount.currency
        spendable = self._available(currency) - self._reserved[currency]
        if spendable < amount.amount:
            replay = await self._already_posted(posting)
            if replay is not None:
                return replay
            raise InsufficientFunds(
                f"{self.merchant_id} has {Money(max(spendable, 0), currency)} available, {amount} requested"
            )
        self._reserved[currency] += amount.amount
        try:
            result = await self._post(dataclasses.replace(posting, require_funds=True))
        finally:
            self._reserved[currency] -= amount.amount
        if result.error_code == "balance_insufficient":
            raise InsufficientFunds(result.error or "balance insufficient")
        return result

    async def balances(self) -> dict[str, int]:
        """Available balance per currency, in minor units."""
        await self._ensure_loaded()
        return {currency: b.available for currency, b in sorted(self._balances.items())}

    async def snapshot(self) -> dict[str, dict[str, int]]:
        """Per currency: available, reserved by debits in flight, and the balance row's version."""
        await self._ensure_loaded()
        return {
            currency: {"available": b.available, "reserved": self._reserved[currency], "version": b.version}
            for currency, b in sorted(self._balances.items())
        }

    async def resync(self) -> dict[str, int]:
        """Reload the balances from Postgres (keeping any newer version already held)."""
        async with (
            self._database_lock,
            await psycopg.AsyncConnection.connect(self._database_url, autocommit=True) as conn,
        ):
            fresh = await store.merchant_balances_async(conn, self.merchant_id)
        self._apply(fresh.values())
        self._loaded = True
        return {currency: b.available for currency, b in sorted(self._balances.items())}

    # -- internals ------------------------------------------------------------------------------------------

    def _check_owner(self, posting: Posting) -> None:
        if posting.merchant_id != self.merchant_id:
            raise ValueError(f"posting for {posting.merchant_id} sent to the wallet of {self.merchant_id}")

    def _available(self, currency: str) -> int:
        held = self._balances.get(currency)
        return held.available if held is not None else 0

    def _apply(self, balances: Iterable[MerchantBalance]) -> None:
        for balance in balances:
            held = self._balances.get(balance.currency)
            if held is None or balance.version > held.version:
                self._balances[balance.currency] = balance

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        async with self._load_lock:  # calls arriving together wait for one load instead of each loading
            if self._loaded:
                return
            try:
                await self.resync()
            except psycopg.Error as exc:
                raise DependencyFailure(f"cannot load the wallet of {self.merchant_id}: {exc}") from exc

    async def _post(self, posting: Posting) -> PostingResult:
        async def one() -> list[PostingResult]:
            return [await self._ledger.post(posting)]

        (result,) = await self._through_ledger(one())
        return result

    async def _through_ledger(self, request: Awaitable[list[PostingResult]]) -> list[PostingResult]:
        """The ledger's results, their balances taken as ours; after any failure, rebuilt from Postgres."""
        try:
            results = await request
        except Exception as exc:
            await self._resync_after_failure()
            if isinstance(exc, PayrayError):
                raise
            raise DependencyFailure(f"ledger unavailable for {self.merchant_id}: {exc}") from exc
        if any(result.error is not None for result in results):
            await self._resync_after_failure()
        for result in results:
            if result.error is None:
                self._apply(result.merchant_balances.values())
        return results

    async def _resync_after_failure(self) -> None:
        try:
            await self.resync()
        except Exception:
            # reload on the next call instead; what is held is still a past state of the ledger
            self._loaded = False
            log.warning("wallet resync failed", exc_info=True, extra={"merchant_id": self.merchant_id})

    async def _already_posted(self, posting: Posting) -> PostingResult | None:
        try:
            async with (
                self._database_lock,
                await psycopg.AsyncConnection.connect(self._database_url, autocommit=True) as conn,
            ):
                transaction_id = await store.transaction_for_async(conn, posting.kind, posting.external_ref)
                if transaction_id is None:
                    return None
                fresh = await store.merchant_balances_async(conn, self.merchant_id)
        except psycopg.Error as exc:
            raise DependencyFailure(f"cannot read the ledger for {self.merchant_id}: {exc}") from exc
        self._apply(fresh.values())
        touched = posting.currencies
        return PostingResult(
            external_ref=posting.external_ref,
            transaction_id=transaction_id,
            created=False,
            error=None,
            merchant_balances={c: b for c, b in fresh.items() if c in touched},
        )


class RemoteLedger:
    """A ``Ledger`` backed by a ledger writer actor."""

    def __init__(self, writer: ActorHandle) -> None:
        self._writer = writer

    async def post(self, posting: Posting) -> PostingResult:
        result: PostingResult = await self._writer.post.remote(posting)
        return result

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]:
        results: list[PostingResult] = await self._writer.post_many.remote(postings)
        return results


@ray.remote(**ACTOR_OPTIONS)
class WalletActor(Wallet):
    """``Wallet`` as a named, restartable actor; a restart rebuilds it from Postgres on its first call."""

    def __init__(self, merchant_id: str, database_url: str, writer: ActorHandle) -> None:
        super().__init__(merchant_id, database_url, RemoteLedger(writer))


def wallet_name(merchant_id: str) -> str:
    return f"wallet:{merchant_id}"


def get_or_create_wallet(
    merchant_id: str, database_url: str, writers: Sequence[ActorHandle], namespace: str
) -> ActorHandle:
    """The merchant's wallet actor, created (detached, named ``wallet:{merchant_id}``) on first use."""
    return WalletActor.options(  # type: ignore[attr-defined]
        name=wallet_name(merchant_id),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
    ).remote(merchant_id, database_url, writer_for(writers, merchant_id))
