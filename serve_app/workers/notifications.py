"""Notifications: the transactional outbox, relayed to a Redis Stream, delivered by a consumer group.

Every state change writes its outbox row in the statement that makes the change (charges, refunds, payouts,
disputes), so an event exists exactly when its change committed; the charge path never waits for anything
here. The relay publishes committed rows to the stream ``payray:events`` oldest first and then marks them
published: a crash in between publishes a row again, never loses one. Consumers in the group
``payray-notifiers`` deliver each entry (a row in ``notification_deliveries`` keyed on the outbox id, so a
redelivered entry is delivered once, and in the same transaction one pending webhook delivery per endpoint of
the merchant that takes the event) and only then acknowledge it; each consumer also POSTs the due webhook
deliveries, signed, retried with backoff (``serve_app.workers.webhook_delivery``). A consumer that stops
keeps its unacknowledged entries in the group's pending list: it (or another, after ``claim_idle_ms``) picks
them up when it runs again, so nothing is lost while it is down.

Redis here is the one in front of the idempotency keys; without persistence, entries published but not yet
delivered when Redis restarts are gone (their outbox rows say when they were published).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import ray
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from payray.webhooks import DeliveryPolicy
from serve_app.stores.webhook_endpoints import fan_out
from serve_app.workers.schedules import ScheduledActor, repeat, restartable
from serve_app.workers.webhook_delivery import WebhookDispatcher

log = logging.getLogger("payray.notifications")

STREAM = "payray:events"
GROUP = "payray-notifiers"
#: Entries kept in the stream (approximately): far more than any consumer should ever lag behind.
STREAM_MAXLEN = 1_000_000

UNPUBLISHED = """
SELECT id, topic, aggregate_id, payload FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY(%(ids)s)"
#: A pass's entries recorded in one statement; what comes back was not delivered before. An entry whose
#: outbox row is gone (expired once delivered, so this is a late redelivery) is dropped, not retried for ever.
DELIVERED = """
INSERT INTO notification_deliveries (outbox_id, topic, aggregate_id, payload, consumer)
SELECT e.outbox_id, e.topic, e.aggregate_id, e.payload, %(consumer)s
FROM jsonb_to_recordset(%(entries)s) AS e(outbox_id bigint, topic text, aggregate_id text, payload jsonb)
JOIN outbox o ON o.id = e.outbox_id
ON CONFLICT (outbox_id) DO NOTHING
RETURNING outbox_id, topic, aggregate_id
"""


class _Worker(ScheduledActor):
    """A loop over Postgres and Redis, started (idempotently) by ``start``; connects on first use."""

    def __init__(self, database_url: str, redis_url: str, redis_timeout_s: float, pool_size: int = 2) -> None:
        super().__init__()
        self._pool_size = pool_size
        self._database_url = database_url
        self._redis_url = redis_url
        self._redis_timeout_s = redis_timeout_s
        self._pool: AsyncConnectionPool[Any] | None = None
        self._redis: Redis | None = None

    async def _connect(self) -> tuple[AsyncConnectionPool[Any], Redis]:
        if self._pool is None:
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self._database_url,
                min_size=1,
                max_size=self._pool_size,
                open=False,
                kwargs={"autocommit": True},
            )
            await pool.open(wait=True, timeout=30)
            self._pool = pool
        if self._redis is None:
            self._redis = Redis.from_url(
                self._redis_url, socket_timeout=self._redis_timeout_s, socket_connect_timeout=5
            )
        return self._pool, self._redis


class OutboxRelay(_Worker):
    """Publishes committed outbox rows to the stream; one relay per deployment."""

    def __init__(self, database_url: str, redis_url: str, batch: int = 500, idle_s: float = 0.2) -> None:
        super().__init__(database_url, redis_url, redis_timeout_s=5)
        self._batch = batch
        self._idle_s = idle_s
        self.published = 0

    async def relay_once(self) -> int:
        """Publish one batch of unpublished rows; how many."""
        pool, redis = await self._connect()
        async with pool.connection() as conn, conn.transaction():
            rows = await (await conn.execute(UNPUBLISHED, {"limit": self._batch})).fetchall()
            if not rows:
                return 0
            pipe = redis.pipeline(transaction=False)
            for outbox_id, topic, aggregate_id, payload in rows:
                fields = {"outbox_id": outbox_id, "topic": topic, "aggregate_id": aggregate_id,
                          "payload": json.dumps(payload, separators=(",", ":"))}  # fmt: skip
                pipe.xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()
            await conn.execute(MARK_PUBLISHED, {"ids": [row[0] for row in rows]})
        self.published += len(rows)
        return len(rows)

    async def stats(self) -> dict[str, Any]:
        return {"published": self.published, "running": self._task is not None and not self._task.done()}

    async def _forever(self) -> None:
        """A dependency down: rows wait in the outbox, and the next pass tries again."""
        failure = "outbox relay pass failed"
        await repeat(self._pass, pause_after_failure_s=self._idle_s, failure=failure, logger=log)

    async def _pass(self) -> float:
        more_waiting = await self.relay_once() == self._batch
        return 0.0 if more_waiting else self._idle_s


class NotificationConsumer(_Worker):
    """One member of the consumer group: delivers entries once each, acknowledges them after. ``stop`` stops
    reading; what is pending stays pending in the group."""

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        name: str,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        webhooks: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(database_url, redis_url, redis_timeout_s=10, pool_size=4)  # outlasts a blocking read
        self.name = name
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._webhooks = webhooks or DeliveryPolicy()
        self._dispatcher: WebhookDispatcher | None = None
        self.delivered = 0

    async def consume_once(self) -> int:
        """Deliver what this consumer left pending, what others abandoned, then what is new; how many."""
        _, redis = await self._connect()
        await self._ensure_group(redis)
        entries = await self._read(redis, "0")  # ours, delivered before a stop but not acknowledged
        claimed = await redis.xautoclaim(STREAM, GROUP, self.name, self._claim_idle_ms, "0-0", count=100)
        entries += list(claimed[1])
        if not entries:
            entries = await self._read(redis, ">", block=True)
        # a pending entry trimmed from the stream comes back empty: it is only acknowledged
        await self._deliver([fields for _, fields in entries if fields])
        if entries:
            await redis.xack(STREAM, GROUP, *(entry_id for entry_id, _ in entries))
        return len(entries)

    async def stats(self) -> dict[str, Any]:
        attempts = self._dispatcher.attempts if self._dispatcher is not None else 0
        return {"name": self.name, "delivered": self.delivered, "webhook_attempts": attempts}

    async def _read(self, redis: Redis, start: str, block: bool = False) -> list[Any]:
        answer: Any = await redis.xreadgroup(  # RESP2: [[stream, [(id, fields), …]]]
            GROUP, self.name, {STREAM: start}, count=100, block=self._block_ms if block else None
        )
        return list(answer[0][1]) if answer else []

    async def _deliver(self, entries: list[dict[bytes, bytes]]) -> None:
        """Record the entries as delivered (once each, whoever delivered them first) and log the new ones."""
        if not entries:
            return
        rows = []
        for fields in entries:
            data = {k.decode(): v.decode() for k, v in fields.items()}
            rows.append({
                "outbox_id": int(data["outbox_id"]),
                "topic": data["topic"],
                "aggregate_id": data["aggregate_id"],
                "payload": json.loads(data["payload"]),
            })  # fmt: skip
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(DELIVERED, {"entries": Jsonb(rows), "consumer": self.name})
            delivered = await cursor.fetchall()
            webhooks = await fan_out(conn, [outbox_id for outbox_id, _, _ in delivered])
        self.delivered += len(delivered)
        if webhooks and self._dispatcher is not None:
            self._dispatcher.wake()
        for outbox_id, topic, aggregate_id in delivered:
            log.info("notification %s %s", topic, aggregate_id, extra={"outbox_id": outbox_id})

    async def _ensure_group(self, redis: Redis) -> None:
        try:
            # from the start of the stream: nothing published before the group existed is skipped
            await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _forever(self) -> None:
        """Redis or Postgres down: entries wait in the group, deliveries in their table; the next pass, a
        second later, tries again. The webhooks' loop runs beside the stream's: neither waits on the other."""
        pool, _ = await self._connect()
        dispatcher = self._dispatcher = WebhookDispatcher(pool, self._webhooks)
        try:
            await asyncio.gather(
                repeat(self._pass, pause_after_failure_s=1.0, failure="notification pass failed", logger=log),
                repeat(dispatcher.run_pass, pause_after_failure_s=1.0, failure="webhook pass", logger=log),
            )
        finally:
            await dispatcher.aclose()

    async def _pass(self) -> float:
        await self.consume_once()  # it waits for new entries itself, up to ``block_ms``
        return 0.0


RELAY_NAME = "outbox_relay"
OutboxRelayActor: Any = restartable(OutboxRelay)
NotificationConsumerActor: Any = restartable(NotificationConsumer)


def consumer_name(index: int) -> str:
    return f"notifier:{index}"


def start_notifications(
    database_url: str,
    redis_url: str,
    namespace: str,
    consumers: int = 1,
    webhooks: DeliveryPolicy | None = None,
) -> list[Any]:
    """The relay and the group's consumers (delivering webhooks as ``webhooks`` says), created if missing and
    running."""
    common = {"namespace": namespace, "get_if_exists": True, "lifetime": "detached"}
    handles = [OutboxRelayActor.options(name=RELAY_NAME, **common).remote(database_url, redis_url)]
    for i in range(consumers):
        handles.append(
            NotificationConsumerActor.options(name=consumer_name(i), **common).remote(
                database_url, redis_url, consumer_name(i), webhooks=webhooks
            )
        )
    ray.get([h.start.remote() for h in handles])
    return handles
