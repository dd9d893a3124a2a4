"""The replica's view of the wallet actors: one named actor per merchant, created on first use."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from actors.ledger_pool import get_or_create_writers
from actors.wallet import get_or_create_wallet, wallet_name
from ledger.postings import Posting
from ledger.store import PostingResult
from payray.money import Money
from serve_app.batching import NaturalBatcher


class WalletDirectory:
    def __init__(self, database_url: str, pool_size: int, namespace: str) -> None:
        self._database_url = database_url
        self._namespace = namespace
        self._writers = get_or_create_writers(database_url, pool_size, namespace)
        self._handles: dict[str, Any] = {}
        self._credits: dict[str, NaturalBatcher[Posting, PostingResult]] = {}

    def wallet(self, merchant_id: str) -> Any:
        handle = self._handles.get(merchant_id)
        if handle is None:
            handle = get_or_create_wallet(merchant_id, self._database_url, self._writers, self._namespace)
            self._handles[merchant_id] = handle
        return handle

    async def open(self, merchant_id: str) -> None:
        """Start the merchant's wallet and load it now, so its first charge does not wait for a process."""
        await self.balances(merchant_id)

    async def apply(self, merchant_id: str, posting: Posting) -> PostingResult:
        """Post through the merchant's wallet, which takes the resulting balance as its own.

        Postings for one merchant that arrive while its wallet is busy go to it together, in one call.
        """
        batcher = self._credits.get(merchant_id)
        if batcher is None:
            wallet = self.wallet(merchant_id)

            async def send(postings: list[Posting]) -> list[PostingResult]:
                results: list[PostingResult] = await wallet.credit_many.remote(postings)
                return results

            batcher = self._credits[merchant_id] = NaturalBatcher(send)
        return await batcher.submit(posting)

    async def debit(self, merchant_id: str, posting: Posting, amount: Money) -> PostingResult:
        """Post a movement out of the merchant's balance if the wallet holds ``amount`` available.

        Raises ``InsufficientFunds`` (from the wallet actor) when it does not. Not batched: each debit is
        checked against the balance that the debits before it left.
        """
        result: PostingResult = await self.wallet(merchant_id).debit.remote(posting, amount)
        return result

    async def balances(self, merchant_id: str) -> dict[str, int]:
        result: dict[str, int] = await self.wallet(merchant_id).balances.remote()
        return result

    def live_merchants(self) -> list[str]:
        """Merchants whose wallet actor is running now (checking others would only create them)."""
        prefix = wallet_name("")
        return [
            actor["name"][len(prefix) :]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == self._namespace and actor["name"].startswith(prefix)
        ]

    async def ready(self) -> bool:
        await asyncio.gather(*(w.ready.remote() for w in self._writers))
        return True
