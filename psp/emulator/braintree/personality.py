"""The Braintree personality's parts wired together: its store and journal, credentials, gateway, fault
profile, idempotency table and webhook sender; the clock is the emulator's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from psp.emulator.braintree.credentials import Credentials
from psp.emulator.braintree.gateway import Gateway
from psp.emulator.braintree.store import BraintreeStore
from psp.emulator.braintree.webhooks import BraintreeWebhookSender
from psp.emulator.clock import Clock
from psp.emulator.faults import FaultConfig, Faults
from psp.emulator.idempotency import IdempotencyTable
from psp.emulator.runtime import EMULATOR
from psp.emulator.store import Journal

log = logging.getLogger(__name__)

SUBDIRECTORY = "braintree"
SETTLEMENT_TICK_S = 1.0


@dataclass
class Braintree:
    store: BraintreeStore
    credentials: Credentials
    gateway: Gateway
    faults: Faults
    idempotency: IdempotencyTable
    webhooks: BraintreeWebhookSender
    _ticker: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, data_dir: Path | None, clock: Clock) -> Braintree:
        """Replays ``data_dir/braintree/`` (memory only when None)."""
        store = BraintreeStore(Journal(data_dir / SUBDIRECTORY) if data_dir is not None else None)
        credentials = Credentials()
        gateway = Gateway(store, clock)
        webhooks = BraintreeWebhookSender(credentials)
        gateway.subscribe(webhooks.on_event)
        return cls(store, credentials, gateway, Faults(), IdempotencyTable(store), webhooks)

    def reset(self) -> None:
        self.store.reset()
        self.credentials.reset()
        self.idempotency.clear_in_flight()
        self.faults.configure(FaultConfig())
        self.faults.clear_record()
        self.webhooks.configure(None)

    async def start(self, app: web.Application) -> None:
        """Settle closed batches as the clock passes them, even when no request comes; webhooks trust the
        CAs the Stripe personality's sender was given."""
        self.webhooks.ca_bundle = self.webhooks.ca_bundle or app[EMULATOR].webhooks.ca_bundle
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SETTLEMENT_TICK_S)
            try:
                self.gateway.settle_due()
            except Exception:
                log.exception("settling the closed Braintree batches failed")

    async def close(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.webhooks.close()
        self.store.close()


BRAINTREE = web.AppKey("braintree", Braintree)
