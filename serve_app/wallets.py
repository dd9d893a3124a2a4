"""The replica's view of the wallets: which host holds a merchant's wallet, and one actor call to reach it.

A merchant's host is ``SlotMap.host_of(merchant)``, computed here without asking anyone. Credits bound for a
host travel in natural batches (one call in flight per host; what arrives meanwhile rides the next), so a
batch holds every merchant of that host and does not shrink as merchants spread out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.wallet_host import get_or_create_hosts
from ledger.postings import Posting
from ledger.store import PostingResult
from payray.batching import NaturalBatcher
from payray.money import Money
from payray.settings import Settings
from payray.slots import SlotMap


class WalletDirectory:
    def __init__(self, hosts: list[Any], slots: SlotMap) -> None:
        if len(hosts) != slots.hosts:
            raise ValueError(f"{len(hosts)} host handles for a slot map of {slots.hosts} hosts")
        self._hosts = hosts
        self._slots = slots
        self._batchers = [NaturalBatcher(self._sender(host)) for host in hosts]

    @classmethod
    def from_settings(cls, settings: Settings) -> WalletDirectory:
        """The deployment's hosts (created if missing) as ``settings`` size them."""
        assert settings.database_url
        hosts = get_or_create_hosts(
            settings.database_url,
            settings.wallet_hosts,
            settings.ray_namespace,
            settings.wallet_cache_size,
            settings.wallet_idle_s,
        )
        return cls(hosts, SlotMap(settings.wallet_hosts, settings.wallet_slots))

    def host(self, merchant_id: str) -> Any:
        return self._hosts[self._slots.host_of(merchant_id)]

    async def post(self, merchant_id: str, posting: Posting) -> PostingResult:
        """Post through the merchant's wallet, which takes the resulting balance as its own."""
        if posting.merchant_id != merchant_id:
            raise ValueError(f"posting for {posting.merchant_id} sent as {merchant_id}'s")
        return await self._batchers[self._slots.host_of(merchant_id)].submit(posting)

    async def debit(self, merchant_id: str, posting: Posting, amount: Money) -> PostingResult:
        """Post a movement out of the merchant's balance if the wallet holds ``amount`` available.

        Raises ``InsufficientFunds`` (from the host) when it does not. Not batched: each debit is checked
        against the balance that the debits before it left.
        """
        if posting.merchant_id != merchant_id:
            raise ValueError(f"posting for {posting.merchant_id} sent as {merchant_id}'s")
        result: PostingResult = await self.host(merchant_id).debit.remote(posting, amount)
        return result

    async def balances(self, merchant_id: str) -> dict[str, int]:
        result: dict[str, int] = await self.host(merchant_id).balances.remote(merchant_id)
        return result

    async def held_balances(self) -> dict[str, dict[str, int]]:
        """The balances of every wallet the hosts hold in memory now (the ones worth checking)."""
        held: dict[str, dict[str, int]] = {}
        for found in await asyncio.gather(*(h.held_balances.remote() for h in self._hosts)):
            held.update(found)
        return held

    async def ready(self) -> bool:
        await asyncio.gather(*(h.ready.remote() for h in self._hosts))
        return True

    @staticmethod
    def _sender(host: Any) -> Any:
        async def send(postings: list[Posting]) -> list[PostingResult]:
            results: list[PostingResult] = await host.post_many.remote(postings)
            return results

        return send
