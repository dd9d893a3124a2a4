"""Delivery of events to merchants' webhook endpoints, run by the notification consumers.

Each due delivery is claimed from Postgres (``FOR UPDATE SKIP LOCKED``, leased past its timeout) and POSTed
in its own task: at most ``concurrency`` at once, each bounded by ``timeout_s`` in all, so one slow or dead
endpoint holds one slot for at most that long and never holds up the others, let alone a charge (which only
writes its outbox row). Every attempt is signed anew and recorded; a 2xx ends the delivery, anything else
schedules the next attempt on the backoff of ``payray.webhooks``, until the window is over. An https
endpoint's certificate is verified against the default CAs and the policy's ``ca_bundle``: one that does not
verify is a failed attempt like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from psycopg_pool import AsyncConnectionPool

from payray.webhooks import DeliveryPolicy, is_loopback, signature_header, url_problem
from psp.tls_trust import outbound_ssl_context
from serve_app.stores import webhook_endpoints as store
from serve_app.stores.webhook_endpoints import DueDelivery
from serve_app.wire.merchant_events import event_object
from serve_app.wire.render import dumps

log = logging.getLogger("payray.webhooks")

USER_AGENT = "payray-webhooks/1 (+https://stripe.com/docs/webhooks)"
#: Longer than any attempt takes, so a live attempt's claim is never taken over by another consumer.
LEASE_MARGIN_S = 30.0


class WebhookDispatcher:
    """Claims due deliveries and attempts each in a task of its own; ``wake`` says new ones may be due."""

    def __init__(self, pool: AsyncConnectionPool[Any], policy: DeliveryPolicy) -> None:
        self._pool = pool
        self._policy = policy
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self.attempts = 0

    def wake(self) -> None:
        self._wake.set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=self._policy.concurrency, max_keepalive_connections=8)
            timeout = httpx.Timeout(self._policy.timeout_s)
            verify = outbound_ssl_context(self._policy.ca_bundle)
            self._client = httpx.AsyncClient(
                timeout=timeout, limits=limits, follow_redirects=False, verify=verify
            )
        return self._client

    async def dispatch_once(self) -> int:
        """Start the attempts now due, as many as free slots allow; how many were started."""
        free = self._policy.concurrency - len(self._in_flight)
        if free <= 0:
            await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
            return 0
        lease_s = self._policy.timeout_s + LEASE_MARGIN_S
        async with self._pool.connection() as conn:
            due = await store.claim_due(conn, free, lease_s)
        for delivery in due:
            task = asyncio.get_running_loop().create_task(self._attempt(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(due)

    async def run_pass(self) -> float:
        """One pass of the loop: on at once while deliveries are due, else wait to be woken or to poll."""
        if await self.dispatch_once():
            return 0.0
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._policy.poll_s)
        return 0.0

    async def aclose(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _attempt(self, delivery: DueDelivery) -> None:
        try:
            status, error, duration_ms = await self._post(delivery)
            await self._record(delivery, status, error, duration_ms)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease runs out and the delivery is tried again
            log.warning("webhook attempt not recorded", extra={"delivery_id": delivery.id}, exc_info=True)

    async def _post(self, delivery: DueDelivery) -> tuple[int | None, str | None, int]:
        """The attempt: ``(HTTP status, None)`` or ``(None, what went wrong)``, and how long it took."""
        body = dumps(event_object(delivery.event))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": signature_header(delivery.secret, body, int(time.time())),
        }
        started = time.perf_counter()
        status: int | None = None
        error: str | None = url_problem(delivery.url)
        if error is None and self._policy.loopback_only and not is_loopback(delivery.url):
            error = "not a loopback address, and this stack posts to loopback only"
        if error is None:
            try:
                async with asyncio.timeout(self._policy.timeout_s):
                    async with self._http().stream("POST", delivery.url, content=body, headers=headers) as r:
                        status = r.status_code  # the answer's body is not read: only its status counts
            except (TimeoutError, httpx.TimeoutException):
                error = f"timed out after {self._policy.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        self.attempts += 1
        return status, error, round((time.perf_counter() - started) * 1000)

    async def _record(self, delivery: DueDelivery, status: int | None, error: str | None, ms: int) -> None:
        ok = status is not None and 200 <= status < 300
        async with self._pool.connection() as conn, conn.transaction():
            await store.record_attempt(conn, delivery, status, error, ms)
            if ok:
                await store.succeeded(conn, delivery)
                return
            at = self._policy.next_attempt_after(delivery.attempt, delivery.began_at.timestamp(), time.time())
            if at is not None:
                await store.retry_at(conn, delivery, at)
                return
            disabled = await store.give_up(conn, delivery)
        log.warning(
            "webhook delivery failed for good%s",
            "; endpoint disabled" if disabled else "",
            extra={"endpoint_id": delivery.endpoint_id, "event_id": delivery.event.id},
        )
