"""One wallet per merchant: the single writer of its balance, rebuilt from the ledger.

A wallet is a plain object, many to a process: a wallet host (``actors/wallet_host.py``) keeps those of its
active merchants in memory. The wallet answers "may this payout or refund happen?" from memory, without a
database round trip, and posts every movement of the merchant's money through its host's ledger writer. Its
state is only ever taken from Postgres: when loaded (and after any failure) from ``account_balances``, and
after each posting from the balance the ledger returns with it. Every balance carries the version of its row,
and the wallet keeps the highest version it has seen, so results arriving out of order or twice change
nothing, and a load racing a posting cannot roll the balance back.

Concurrency: calls interleave at their ``await`` points. A debit checks ``available - reserved >= amount`` and
reserves the amount in one synchronous step, then posts; the reservation is released in the same step that
applies the posting's resulting balance, so no interleaving lets two debits spend the same funds. Debit
postings also carry ``require_funds``, so Postgres refuses an overdraft even if a wallet's view were stale
(another live copy of the host during a restart, or a debit of a previous incarnation still in flight).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Iterable
from typing import Protocol

import psycopg

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


class LedgerReader(Protocol):
    """The two reads a wallet makes: its merchant's balances, and whether a posting is already written."""

    async def merchant_balances(self, merchant_id: str) -> dict[str, MerchantBalance]: ...

    async def transaction_for(self, kind: str, external_ref: str) -> str | None: ...


class Wallet:
    """The balances of one merchant. Testable without Ray: pass any ``Ledger`` and ``LedgerReader``.

    Small on purpose (a host holds thousands): no locks of its own, a reservation table only while a debit
    is in flight.
    """

    __slots__ = (
        "_balances",
        "_ledger",
        "_load",
        "_posting",
        "_reader",
        "_reserved",
        "callers",
        "merchant_id",
    )

    def __init__(self, merchant_id: str, ledger: Ledger, reader: LedgerReader) -> None:
        self.merchant_id = merchant_id
        self._ledger = ledger
        self._reader = reader
        self._balances: dict[str, MerchantBalance] = {}
        self._reserved: dict[str, int] | None = None
        #: the load from the ledger: None before (or after a failure), the task while it runs, True once done
        self._load: asyncio.Future[None] | bool | None = None
        self._posting = 0
        #: calls of the host's that hold this wallet now (counted by the host)
        self.callers = 0

    @property
    def busy(self) -> bool:
        """In a call, holding a reservation, a posting in flight or a load: not to be passivated."""
        loading = isinstance(self._load, asyncio.Future)
        return bool(self.callers or self._posting or self._reserved or loading)

    async def post(self, posting: Posting) -> PostingResult:
        """Post a movement into the merchant's balance (a capture, a dispute released)."""
        (result,) = await self.post_many([posting])
        return result

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]:
        """``post`` for each, in order, in one call to the ledger: what callers batch stays batched.

        Money into the balance needs no check, so a wallet not loaded yet loads while the postings are
        written, not before them: the first charge of a merchant waits for one indexed read at most, in
        parallel."""
        for posting in postings:
            self._check_owner(posting)
        loading = self._start_loading()
        results = await self._through_ledger(self._ledger.post_many(postings))
        if loading is not None:
            try:
                await loading
            except DependencyFailure:  # the postings stand; the next call loads again
                log.warning("wallet load failed", extra={"merchant_id": self.merchant_id})
        return results

    async def debit(self, posting: Posting, amount: Money) -> PostingResult:
        """Post a movement out of the merchant's balance if ``amount`` is available, else refuse it.

        Raises ``InsufficientFunds`` when ``available - reserved < amount``.

        Idempotent: a debit already in the ledger (a retried call) answers ``created=False`` even when the
        balance no longer covers it.
        """
        self._check_owner(posting)
        if not amount.is_positive():
            raise ValueError(f"debit amount must be positive, got {amount.amount}")
        await self._loaded()
        currency = amount.currency
        reserved = self._reserved or {}
        spendable = self._available(currency) - reserved.get(currency, 0)
        if spendable < amount.amount:
            replay = await self._already_posted(posting)
            if replay is not None:
                return replay
            raise InsufficientFunds(
                f"{self.merchant_id} has {Money(max(spendable, 0), currency)} available, {amount} requested"
            )
        self._reserve(currency, amount.amount)
        try:
            (result,) = await self._through_ledger(
                self._ledger.post_many([dataclasses.replace(posting, require_funds=True)])
            )
        finally:
            self._reserve(currency, -amount.amount)
        if result.error_code == "balance_insufficient":
            raise InsufficientFunds(result.error or "balance insufficient")
        return result

    async def balances(self) -> dict[str, int]:
        """Available balance per currency, in minor units."""
        await self._loaded()
        return {currency: b.available for currency, b in sorted(self._balances.items())}

    async def resync(self) -> dict[str, int]:
        """Reload the balances from Postgres (keeping any newer version already held)."""
        try:
            fresh = await self._reader.merchant_balances(self.merchant_id)
        except psycopg.Error as exc:
            raise DependencyFailure(f"cannot load the wallet of {self.merchant_id}: {exc}") from exc
        self._apply(fresh.values())
        return {currency: b.available for currency, b in sorted(self._balances.items())}

    # -- internals ------------------------------------------------------------------------------------------

    def _check_owner(self, posting: Posting) -> None:
        if posting.merchant_id != self.merchant_id:
            raise ValueError(f"posting for {posting.merchant_id} sent to the wallet of {self.merchant_id}")

    def _available(self, currency: str) -> int:
        held = self._balances.get(currency)
        return held.available if held is not None else 0

    def _reserve(self, currency: str, amount: int) -> None:
        reserved = self._reserved if self._reserved is not None else {}
        left = reserved.get(currency, 0) + amount
        if left:
            reserved[currency] = left
        else:
            reserved.pop(currency, None)
        self._reserved = reserved or None

    def _apply(self, balances: Iterable[MerchantBalance]) -> None:
        for balance in balances:
            held = self._balances.get(balance.currency)
            if held is None or balance.version > held.version:
                self._balances[balance.currency] = balance

    def _start_loading(self) -> asyncio.Future[None] | None:
        """The wallet's load if it is not loaded yet: started by the first call, shared by every call that
        arrives meanwhile, and started again by the next call after a failed one. ``None`` once loaded (a
        loaded wallet keeps no task alive: it is one of thousands in its host)."""
        load = self._load
        if load is True:
            return None
        if not isinstance(load, asyncio.Future):
            load = self._load = asyncio.ensure_future(self._load_once())
        return load

    async def _loaded(self) -> None:
        loading = self._start_loading()
        if loading is not None:
            await loading

    async def _load_once(self) -> None:
        try:
            await self.resync()
        except BaseException:
            self._load = None
            raise
        self._load = True

    async def _through_ledger(self, request: Awaitable[list[PostingResult]]) -> list[PostingResult]:
        """The ledger's results, their balances taken as ours; after any failure, rebuilt from Postgres."""
        self._posting += 1
        try:
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
        finally:
            self._posting -= 1

    async def _resync_after_failure(self) -> None:
        try:
            await self.resync()
        except Exception:
            # load again on the next call instead; what is held is still a past state of the ledger
            self._load = None
            log.warning("wallet resync failed", exc_info=True, extra={"merchant_id": self.merchant_id})

    async def _already_posted(self, posting: Posting) -> PostingResult | None:
        try:
            transaction_id = await self._reader.transaction_for(posting.kind, posting.external_ref)
            if transaction_id is None:
                return None
            fresh = await self._reader.merchant_balances(self.merchant_id)
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
