"""Webhook delivery as Stripe does it: signed events POSTed to an endpoint, at least once, with faults.

Each event the engine emits is queued for the configured endpoint (if its type is subscribed) and sent by
one background task: ``Stripe-Signature: t=<send time>,v1=<HMAC-SHA256(secret, "t.payload")>``, re-signed
at every attempt. A non-2xx answer or a connection error is retried with exponential backoff up to
``max_attempts``. Faults, drawn from a seeded random source: ``delay_ms`` before each send, ``duplicate_rate``
(the event is sent twice), ``reorder_window`` (events are held until that many are waiting, then sent in a
shuffled order) and ``drop_rate`` (a first attempt is dropped as lost in transit; the retry delivers it).
An https endpoint's certificate is verified against the default CAs and those of ``ca_bundle``; one that
does not verify is a failed attempt, as a refused connection is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from psp.tls_trust import outbound_ssl_context

log = logging.getLogger("psp.emulator.webhooks")

Millis = Annotated[float, Field(ge=0.0, le=600_000.0)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
MAX_RECORD = 10_000


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(pattern=r"^https?://")]
    secret: Annotated[str, Field(pattern=r"^whsec_\S+$")]
    #: Event types to send (``*`` or exact types); Stripe's endpoints subscribe the same way.
    enabled_events: list[str] = Field(default_factory=lambda: ["*"])
    delay_ms: Millis = 0.0
    duplicate_rate: Rate = 0.0
    drop_rate: Rate = 0.0
    reorder_window: Annotated[int, Field(ge=1, le=1000)] = 1
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 8
    backoff_ms: Millis = 100.0
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    seed: int | None = None

    def wants(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The ``Stripe-Signature`` header for ``payload`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Attempt:
    event_id: str
    event_type: str
    attempt: int
    status: int | None  # None: connection error, or dropped on purpose
    at: float
    fault: str | None = None


class WebhookSender:
    """Queues the engine's events and delivers them to the configured endpoint from one task."""

    def __init__(self, ca_bundle: str | None = None) -> None:
        #: a PEM file of CAs trusted besides the defaults, read when the first delivery opens its session
        self.ca_bundle = ca_bundle
        self.config: WebhookConfig | None = None
        self.rng = random.Random(0)
        self.record: deque[Attempt] = deque(maxlen=MAX_RECORD)
        self.counts: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[dict[str, Any], int]] | None = None
        self._held: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def configure(self, config: WebhookConfig | None) -> None:
        """A new endpoint (or none): its own seed, record and counts; what a reorder window held is gone."""
        self.config = config
        self.rng = random.Random(config.seed if config and config.seed is not None else 0)
        self._held.clear()
        self.record.clear()
        self.counts.clear()

    def on_event(self, event: dict[str, Any]) -> None:
        """The engine's listener: runs inside the request that caused the event, so it only enqueues."""
        config = self.config
        if config is None or not config.wants(event["type"]):
            return
        self._ensure_started()
        assert self._queue is not None
        self._held.append(event)
        if len(self._held) >= config.reorder_window:
            batch, self._held = self._held, []
            if config.reorder_window > 1:
                self.rng.shuffle(batch)
            for held in batch:
                copies = 2 if self.rng.random() < config.duplicate_rate else 1
                for _ in range(copies):
                    self._queue.put_nowait((held, 1))

    async def flush_held(self) -> int:
        """Send what the reorder window is holding now (the control route, and shutdown)."""
        held, self._held = self._held, []
        self._ensure_started()
        assert self._queue is not None
        for event in held:
            self._queue.put_nowait((event, 1))
        return len(held)

    async def idle(self, timeout_s: float = 30.0) -> bool:
        """Whether every queued delivery (and retry) has finished within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self._queue is None or self._queue.empty()) and not self._inflight:
                return True
            await asyncio.sleep(0.02)
        return False

    def status(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump() if self.config else None,
            "queued": self._queue.qsize() if self._queue else 0,
            "held": len(self._held),
            "in_flight": len(self._inflight),
            "counts": dict(self.counts),
            "attempts": [asdict(a) for a in list(self.record)[-200:]],
        }

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, *self._inflight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- delivery -------------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._queue = self._queue or asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._deliver_forever())

    async def _deliver_forever(self) -> None:
        assert self._queue is not None
        while True:
            event, attempt = await self._queue.get()
            task = asyncio.get_running_loop().create_task(self._deliver(event, attempt))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _deliver(self, event: dict[str, Any], attempt: int) -> None:
        config = self.config
        if config is None:
            return
        if config.delay_ms:
            await asyncio.sleep(config.delay_ms / 1000)
        status: int | None = None
        fault = None
        if attempt == 1 and self.rng.random() < config.drop_rate:
            fault = "dropped"
        else:
            status = await self._post(config, event)
        self._remember(Attempt(event["id"], event["type"], attempt, status, time.time(), fault))
        if status is not None and 200 <= status < 300:
            return
        if attempt >= config.max_attempts:
            log.warning("webhook %s given up after %d attempts", event["id"], attempt)
            self.counts["given_up"] += 1
            return
        await asyncio.sleep(config.backoff_ms / 1000 * 2 ** (attempt - 1))
        assert self._queue is not None
        self._queue.put_nowait((event, attempt + 1))

    async def _post(self, config: WebhookConfig, event: dict[str, Any]) -> int | None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=outbound_ssl_context(self.ca_bundle))
            self._session = aiohttp.ClientSession(connector=connector)
        payload = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(config.secret, payload, int(time.time())),
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            timeout = aiohttp.ClientTimeout(total=config.timeout_s)
            post = self._session.post(config.url, data=payload, headers=headers, timeout=timeout)
            async with post as answer:
                await answer.read()
                return answer.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    def _remember(self, attempt: Attempt) -> None:
        self.record.append(attempt)
        ok = attempt.status is not None and 200 <= attempt.status < 300
        self.counts["delivered" if ok else (attempt.fault or "failed")] += 1
