"""The service's parts, built from ``Settings``: the one place that knows how the Postgres pool, the Redis
fast keys, the PSP client, the wallet directory, the flows and the services are made and wired together.

The API replica and each background worker open their own ``Parts`` (a Ray actor cannot share another
process's connections) and take what they use. Each part is built on first use and once, so a worker that
never charges never connects to Redis, and the reconciliation scheduler never looks up the wallet hosts.
``aclose`` closes what was opened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from payray.charge import Transition
from payray.settings import Settings
from psp.braintree.adapter import BraintreePsp
from psp.port import PaymentServiceProvider
from psp.stripe_adapter import ObserveCall, StripePsp
from serve_app.flows.braintree_webhook import BraintreeWebhookReceiver
from serve_app.flows.charge import ChargeFlow, ChargeService
from serve_app.flows.customers import CustomerService
from serve_app.flows.dispute import DisputeBooking
from serve_app.flows.idempotent import IdempotentRequests
from serve_app.flows.intents import IntentFollower, IntentService
from serve_app.flows.late_success import LateSuccesses
from serve_app.flows.payout import PayoutFlow, PayoutService
from serve_app.flows.psp_routes import PspRoutes
from serve_app.flows.reconciliation import Reconciliation
from serve_app.flows.recovery import Recovery
from serve_app.flows.refund import RefundFlow, RefundService
from serve_app.flows.webhook import WebhookReceiver
from serve_app.flows.webhook_endpoints import WebhookEndpoints
from serve_app.stores import keys as keys_db
from serve_app.stores.fast_keys import FastKeys
from serve_app.wallets import WalletDirectory

log = logging.getLogger("payray.parts")

#: How long the pool may take to open its first connections before the service gives up starting.
POOL_OPEN_TIMEOUT_S = 30
#: The fast keys give up on Redis this quickly: a slow Redis falls back to Postgres instead of stalling.
REDIS_TIMEOUT_S = 0.5


class Parts:
    """What one process of the service runs on; open it with ``await Parts.open(...)``."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        on_transition: Callable[[Transition], None] | None = None,
        on_psp_call: ObserveCall | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self._on_transition = on_transition
        self._on_psp_call = on_psp_call

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        min_connections: int = 1,
        max_connections: int,
        on_transition: Callable[[Transition], None] | None = None,
        on_psp_call: ObserveCall | None = None,
        check_connections: bool = False,
    ) -> Parts:
        """The parts over a Postgres pool of ``min_connections`` to ``max_connections``, opened and ready.

        ``on_transition`` sees every transition of the charges this process drives, and ``on_psp_call``
        every HTTP request it sends the PSP (the API counts both).
        ``check_connections`` tries each connection before lending it (one round trip), so a Postgres
        restart costs nothing to a process that uses its connections rarely and keeps them idle meanwhile.
        """
        assert settings.database_url, "the database URL is filled in before the service starts"
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database_url,
            min_size=min_connections,
            max_size=max_connections,
            open=False,
            # named after this process, so a key it leases is free once its sessions are gone
            kwargs={"autocommit": True, "application_name": keys_db.HOLDER},
            check=AsyncConnectionPool.check_connection if check_connections else None,
        )
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
        return cls(settings, pool, on_transition, on_psp_call)

    def build_api(self) -> None:
        """Build every part the API's routes use now, rather than in the first request to need each."""
        _ = (
            self.charges,
            self.intents,
            self.refunds,
            self.payouts,
            self.customers,
            self.webhooks,
            self.braintree_webhooks,
            self.webhook_endpoints,
        )

    # -- clients ---------------------------------------------------------------------------------------------

    @cached_property
    def psp(self) -> StripePsp:
        s = self.settings
        assert s.psp_api_key, "the PSP key is filled in before the service starts"
        return StripePsp(
            s.psp_api_key,
            s.psp_api_base,
            s.psp_timeout_s,
            s.psp_max_retries,
            observe=self._on_psp_call,
            ca_bundle=s.ca_bundle,
        )

    @cached_property
    def braintree(self) -> BraintreePsp | None:
        """Braintree, when the settings name a merchant there."""
        s = self.settings
        if not s.braintree_merchant_id:
            return None
        assert s.braintree_public_key and s.braintree_private_key, "checked with the settings"
        return BraintreePsp(
            s.braintree_merchant_id,
            s.braintree_public_key,
            s.braintree_private_key,
            s.braintree_environment,
            s.psp_timeout_s,
            ca_bundle=s.ca_bundle,
        )

    @cached_property
    def psps(self) -> PspRoutes:
        """Every PSP configured, by name, and the merchants' routing among them (one per process: its
        breakers learn from every payment it makes)."""
        adapters: dict[str, PaymentServiceProvider] = {"stripe": self.psp}
        if self.braintree is not None:
            adapters["braintree"] = self.braintree
        return PspRoutes.over(self.pool, adapters)

    @cached_property
    def redis(self) -> Redis:
        assert self.settings.redis_url, "the Redis URL is filled in before the service starts"
        return Redis.from_url(
            self.settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )

    @cached_property
    def fast_keys(self) -> FastKeys:
        return FastKeys(self.redis, self.settings.idempotency_ttl_ms, self.settings.in_flight_lease_ms)

    @cached_property
    def wallets(self) -> WalletDirectory:
        return WalletDirectory.from_settings(self.settings)

    # -- flows: each drives one resource's state machine -----------------------------------------------------

    @cached_property
    def charge_flow(self) -> ChargeFlow:
        """One per process: the webhooks ask it which charges it is driving or saw past the PSP."""
        follow = IntentFollower(self.pool)
        return ChargeFlow(
            self.pool, self.psps, self.wallets, on_transition=self._on_transition, follow=follow
        )

    @cached_property
    def refund_flow(self) -> RefundFlow:
        return RefundFlow(self.pool, self.psps, self.wallets)

    @cached_property
    def payout_flow(self) -> PayoutFlow:
        return PayoutFlow(self.pool, self.wallets)

    @cached_property
    def disputes(self) -> DisputeBooking:
        return DisputeBooking(self.pool, self.wallets)

    @cached_property
    def late_successes(self) -> LateSuccesses:
        return LateSuccesses(self.pool, self.psps, self.wallets)

    @cached_property
    def recovery(self) -> Recovery:
        return Recovery(
            self.pool,
            self.charge_flow,
            self.refund_flow,
            self.payout_flow,
            self.disputes,
            self.late_successes,
        )

    @cached_property
    def reconciliation(self) -> Reconciliation:
        """Every PSP configured here: each one's report against the ledger rows of its payments."""
        return Reconciliation(self.pool, self.psps.adapters)

    # -- services: the API's requests, behind the idempotency layers ----------------------------------------

    @cached_property
    def requests(self) -> IdempotentRequests:
        return IdempotentRequests(self.pool, self.fast_keys, self.settings.in_flight_lease_ms)

    @cached_property
    def charges(self) -> ChargeService:
        return ChargeService(self.pool, self.requests, self.charge_flow, self.settings.fee_bps)

    @cached_property
    def intents(self) -> IntentService:
        return IntentService(self.pool, self.requests, self.charge_flow, self.charges)

    @cached_property
    def refunds(self) -> RefundService:
        return RefundService(self.pool, self.requests, self.refund_flow)

    @cached_property
    def payouts(self) -> PayoutService:
        return PayoutService(self.pool, self.requests, self.payout_flow)

    @cached_property
    def customers(self) -> CustomerService:
        return CustomerService(self.pool, self.requests)

    @cached_property
    def webhooks(self) -> WebhookReceiver:
        s = self.settings
        return WebhookReceiver(
            self.pool,
            self.psp,
            self.charge_flow,
            self.refund_flow,
            self.disputes,
            s.stripe_webhook_secrets,
            self.late_successes,
        )

    @cached_property
    def braintree_webhooks(self) -> BraintreeWebhookReceiver:
        return BraintreeWebhookReceiver(
            self.pool, self.braintree, self.charge_flow, self.late_successes, self.disputes
        )

    @cached_property
    def webhook_endpoints(self) -> WebhookEndpoints:
        return WebhookEndpoints(self.pool)

    async def aclose(self) -> None:
        """Close the clients that were opened (the PSP's HTTP session, Redis), then the pool."""
        for name in ("psp", "braintree", "redis"):
            if vars(self).get(name) is not None:  # built: a cached_property keeps its value in the instance
                try:
                    await getattr(self, name).aclose()
                except Exception:  # closing the rest matters more
                    log.warning("closing %s failed", name, exc_info=True)
        await self.pool.close()
