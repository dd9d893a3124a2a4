"""The PSPs one process reaches, by name, and the routing of merchants' payments among them.

Merchants' priority lists come from Postgres (``merchant_psp_routing``: only the merchants that set one) and
are read whole every few seconds, so routing costs a new payment no query however many merchants pay; the
circuit breakers (``payray.routing.Router``) are this process's
own: each replica learns a PSP's health from the answers it gets. A PSP a merchant lists but this service has
no credentials for is skipped, and a merchant whose list leaves nothing routes to the first PSP configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from payray.routing import HEALTHY_ENDS, PSPS, AttemptEnd, Router
from psp.port import PaymentServiceProvider, PspConfigurationError
from serve_app.stores import routing as routing_db

#: How long the merchants' PSP lists are used before they are read again: a change made through another
#: replica reaches this one within it.
ROUTING_TTL_S = 5.0

#: Reads every merchant's list that differs from the default (Stripe alone).
ReadRoutings = Callable[[], Awaitable[Mapping[str, Sequence[str]]]]


class PspRoutes:
    """The PSP adapters by name, each merchant's order of them, and their breakers."""

    def __init__(
        self,
        adapters: Mapping[str, PaymentServiceProvider],
        read: ReadRoutings | None = None,
        *,
        router: Router | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = ROUTING_TTL_S,
    ) -> None:
        assert adapters, "a service reaches at least one PSP"
        self.adapters = dict(adapters)
        self.router = router or Router()
        self.clock = clock
        self._read = read
        self._ttl_s = ttl_s
        self._routings: Mapping[str, Sequence[str]] = {}
        self._expires = float("-inf")
        self._reading: asyncio.Lock | None = None

    @classmethod
    def only(cls, psp: PaymentServiceProvider, name: str = "stripe") -> PspRoutes:
        """One PSP for every merchant."""
        return cls({name: psp})

    @classmethod
    def over(
        cls, pool: AsyncConnectionPool[Any], adapters: Mapping[str, PaymentServiceProvider]
    ) -> PspRoutes:
        """Merchants' lists read from the service's database."""

        async def read() -> Mapping[str, Sequence[str]]:
            async with pool.connection() as conn:
                return await routing_db.all_routings(conn)

        return cls(adapters, read)

    def adapter(self, name: str) -> PaymentServiceProvider:
        """The adapter of ``name``: a payment at a PSP this service has no credentials for is a setup error,
        not an outcome (nothing may be assumed about it)."""
        try:
            return self.adapters[name]
        except KeyError:
            raise PspConfigurationError(
                f"a payment is at {name}, which this service is not set up for"
            ) from None

    async def priorities(self, merchant_id: str) -> tuple[str, ...]:
        """The merchant's PSPs in order, those configured here only."""
        if self._read is None:
            listed: Sequence[str] = PSPS
        else:
            if self.clock() >= self._expires:
                await self._refresh(self._read)
            listed = self._routings.get(merchant_id, routing_db.DEFAULT_ROUTING)
        usable = tuple(p for p in listed if p in self.adapters)
        return usable or (next(p for p in PSPS if p in self.adapters),)

    async def _refresh(self, read: ReadRoutings) -> None:
        """Read the lists again, once however many payments are waiting for them."""
        self._reading = self._reading or asyncio.Lock()
        async with self._reading:
            if self.clock() < self._expires:
                return  # another payment read them meanwhile
            self._routings = dict(await read())
            self._expires = self.clock() + self._ttl_s

    def forget(self) -> None:
        """Read the lists again for the next payment (one was just changed here)."""
        self._expires = float("-inf")

    async def first(self, merchant_id: str, currency: str) -> str:
        """Where a new payment of the merchant goes: its first PSP that takes the currency and whose breaker
        lets it through (the first on its list when none takes it: that PSP's refusal is the answer)."""
        order = await self._taking(merchant_id, currency)
        chosen = self.router.next_psp(order, (), self.clock())
        assert chosen is not None, "a first attempt always has a PSP"
        return chosen

    async def after(self, merchant_id: str, current: str, currency: str) -> str | None:
        """Where a payment goes after a definite failure at ``current``: on down the merchant's list, never
        back up it (so no PSP sees one payment twice), skipping PSPs that do not take the currency or whose
        breaker is open. None: nowhere."""
        order = await self.priorities(merchant_id)
        tried = order[: order.index(current) + 1] if current in order else (current,)
        usable = [p for p in order if p in tried or self.adapters[p].takes(currency)]
        return self.router.next_psp(usable, tried, self.clock())

    async def _taking(self, merchant_id: str, currency: str) -> tuple[str, ...]:
        order = await self.priorities(merchant_id)
        return tuple(p for p in order if self.adapters[p].takes(currency)) or order[:1]

    def record(self, psp: str, currency: str, end: AttemptEnd, seconds: float) -> None:
        """Feed ``psp``'s breaker with how an attempt there ended and how long it took; not one the PSP was
        never asked (a currency it does not take says nothing of its health)."""
        if psp in self.router.breakers and self.adapters[psp].takes(currency):
            self.router.breakers[psp].record(self.clock(), ok=end in HEALTHY_ENDS, seconds=seconds)

    def health(self) -> Mapping[str, str]:
        """Each configured PSP's breaker: closed, open or half_open."""
        return {name: state for name, state in self.router.health().items() if name in self.adapters}

    def breakers(self) -> list[dict[str, Any]]:
        """Each configured PSP's breaker as the admin API shows it."""
        now = self.clock()
        shown = []
        for name in self.adapters:
            breaker = self.router.breakers[name]
            reopens = breaker.opened_at + breaker.open_s - now if breaker.state == "open" else 0.0
            shown.append(
                {
                    "object": "psp_health",
                    "psp": name,
                    "breaker": breaker.state,
                    "bad_in_a_row": breaker.bad_in_a_row,
                    "reopens_in_s": round(max(0.0, reopens), 3),
                }
            )
        return shown
