"""The ops monitor: a Ray actor that samples the running system every second and keeps the last minutes of
figures for the ops page (``GET /dashboard``).

Every API replica publishes its totals (requests by route group, latency buckets, PSP calls) into one Redis
hash each second; the monitor reads that hash, asks each wallet host and the background workers for their
counters, reads the work in progress from Postgres every few seconds and, while the page is open, checks
the invariants once a minute.
The figures (``payray/figures.py``) are computed over a window of a few seconds and kept for
``HISTORY_S``, so a page opened mid-incident shows what led to it. Nothing here is durable: a restarted
monitor starts a new history.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from redis.asyncio import Redis

from actors.wallet_host import host_name
from payray.figures import ReplicaTotals, Sample, frame
from payray.settings import Settings
from serve_app.flows.invariants import check_invariants
from serve_app.stores import ops as ops_db
from serve_app.stores import reconciliation as reconciliation_db
from serve_app.workers.notifications import RELAY_NAME, consumer_name
from serve_app.workers.recovery import SWEEPER_NAME
from serve_app.workers.schedules import ServiceSchedule, repeat, restartable, scheduled, start_scheduled

log = logging.getLogger("payray.monitor")

MONITOR_NAME = "ops_monitor"
#: The Redis hash where each replica's totals wait for the monitor (field: the replica's id).
REPLICA_TOTALS = "payray:ops:replicas"
#: A replica silent this long is forgotten (it stays on the page as down until then).
FORGET_AFTER_S = 60.0
SAMPLE_EVERY_S = 1.0
#: Figures are differences over this window: long enough for a p99 to mean something at low rates.
WINDOW_S = 5.0
HISTORY_S = 300
#: Postgres is read this often, the invariants checked this often (they list the PSP's captures), and
#: only while someone watches: the page asked for figures within ``WATCHED_S``.
DATABASE_EVERY_S = 5.0
INVARIANTS_EVERY_S = 60.0
WATCHED_S = 120.0
#: A part that takes longer than this to answer a sample counts as not answering.
ANSWER_WITHIN_S = 1.0


class OpsMonitor(ServiceSchedule):
    """Samples once a second once started; ``frames(since)`` gives what it computed after ``since``."""

    max_connections = 2

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._samples: deque[Sample] = deque(maxlen=int(WINDOW_S / SAMPLE_EVERY_S) + 2)
        self._frames: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_S / SAMPLE_EVERY_S))
        self._slow: dict[str, Any] = {}  # what is read every few seconds, as last read
        self._slow_read_at = 0.0
        self._invariants: dict[str, Any] = {"ok": None, "failing": [], "checked_at": None}
        self._invariants_task: asyncio.Task[None] | None = None
        self._redis: Redis | None = None
        self._watched_at = 0.0

    async def frames(self, since: float | None = None) -> list[dict[str, Any]]:
        """The figures computed after ``since`` (unix seconds), oldest first; all kept without it."""
        self._watched_at = time.time()
        return [f for f in self._frames if since is None or f["at"] > since]

    async def _forever(self) -> None:
        await repeat(
            self._pass, pause_after_failure_s=SAMPLE_EVERY_S, failure="ops sample failed", logger=log
        )

    async def _pass(self) -> float:
        started = time.monotonic()
        sample = await self.sample()
        self._samples.append(sample)
        before = next(s for s in self._samples if sample.at - s.at <= WINDOW_S + SAMPLE_EVERY_S / 2)
        if before is sample and len(self._samples) > 1:
            before = self._samples[-2]
        if before is not sample:
            self._frames.append(frame(before, sample))
        return max(SAMPLE_EVERY_S - (time.monotonic() - started), 0.0)

    async def sample(self) -> Sample:
        """The system now: replicas' totals, the hosts' counters, and what was read from Postgres last."""
        now = time.time()
        replicas, redis_up = await self._replica_totals(now)
        hosts = await _gather_answers(
            {i: self._actor_stats(host_name(i)) for i in range(self._settings.wallet_hosts)}
        )
        if now - self._slow_read_at >= DATABASE_EVERY_S:
            self._slow_read_at = now
            self._slow = await self._read_slow()
        due = now - (self._invariants.get("started_at") or 0) >= INVARIANTS_EVERY_S
        if due and now - self._watched_at <= WATCHED_S and not self._checking():
            self._invariants_task = asyncio.create_task(self._check_invariants(now))
        return Sample(now, replicas, hosts, redis_up, {**self._slow, "invariants": dict(self._invariants)})

    async def _replica_totals(self, now: float) -> tuple[dict[str, ReplicaTotals], bool]:
        if self._redis is None:
            self._redis = (await self._parts()).redis
        try:
            published = await asyncio.wait_for(self._redis.hgetall(REPLICA_TOTALS), ANSWER_WITHIN_S)
        except Exception:
            log.debug("replica totals unavailable", exc_info=True)
            previous = self._samples[-1].replicas if self._samples else {}
            return dict(previous), False
        totals: dict[str, ReplicaTotals] = {}
        forgotten: list[bytes | str] = []
        for field_name, raw in published.items():
            try:
                one = ReplicaTotals.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                forgotten.append(field_name)
                continue
            if now - one.at > FORGET_AFTER_S:
                forgotten.append(field_name)
            else:
                totals[one.replica] = one
        if forgotten:
            await self._redis.hdel(REPLICA_TOTALS, *forgotten)
        return totals, True

    async def _actor_stats(self, name: str) -> dict[str, Any]:
        handle = ray.get_actor(name, namespace=self._settings.ray_namespace)
        stats: dict[str, Any] = await asyncio.wait_for(handle.stats.remote(), ANSWER_WITHIN_S)
        return stats

    async def _read_slow(self) -> dict[str, Any]:
        """Postgres's view (unfinished work, open discrepancies) and the background workers' counters."""
        database: dict[str, Any] = {"up": False}
        reconciliation: dict[str, Any] | None = None
        try:
            grace_s = self._settings.recovery_grace_s
            async with (await self._parts()).pool.connection(timeout=ANSWER_WITHIN_S) as conn:
                database = {"up": True, **await ops_db.work_in_progress(conn, grace_s)}
                open_by_kind = await reconciliation_db.open_counts(conn)
                latest = await reconciliation_db.latest_reconciled_day(conn)
            reconciliation = {
                "open": sum(open_by_kind.values()),
                "open_by_kind": open_by_kind,
                "last_day": latest.isoformat() if isinstance(latest, datetime.date) else None,
            }
        except Exception:
            log.debug("the database did not answer the monitor", exc_info=True)
        workers = await _gather_answers({
            "janitor": self._actor_stats(SWEEPER_NAME),
            "relay": self._actor_stats(RELAY_NAME),
            "notifier": self._actor_stats(consumer_name(0)),
        })  # fmt: skip
        janitor = workers["janitor"]
        last = (janitor or {}).get("last") or {}
        return {
            "database": database,
            "reconciliation": reconciliation,
            "janitor": {
                "up": janitor is not None,
                "sweeps": (janitor or {}).get("sweeps", 0),
                "last_sweep_at": last.get("at"),
                "last_sweep_s": last.get("seconds"),
                "last_counts": last.get("counts", {}),
                "interval_s": self._settings.recovery_interval_s,
            },
            "notifications": {
                "relay_up": workers["relay"] is not None,
                "published": (workers["relay"] or {}).get("published"),
                "notifier_up": workers["notifier"] is not None,
                "delivered": (workers["notifier"] or {}).get("delivered"),
                "webhook_attempts": (workers["notifier"] or {}).get("webhook_attempts"),
            },
        }

    def _checking(self) -> bool:
        return self._invariants_task is not None and not self._invariants_task.done()

    async def _check_invariants(self, started_at: float) -> None:
        """The same check as ``GET /v1/admin/invariants``, in the background: it lists the PSP's captures."""
        self._invariants["started_at"] = started_at
        clock = time.monotonic()
        try:
            parts = await self._parts()
            assert self._settings.database_url
            report = await check_invariants(self._settings.database_url, parts.psps.adapters, parts.wallets)
        except Exception as exc:
            log.warning("the monitor's invariant check failed: %r", exc)
            self._invariants.update(ok=None, error=type(exc).__name__, checked_at=time.time())
            return
        failing = [name for name, part in report.items() if isinstance(part, dict) and not part["ok"]]
        self._invariants = {
            "ok": not failing,
            "failing": failing,
            "checked_at": time.time(),
            "started_at": started_at,
            "seconds": round(time.monotonic() - clock, 2),
        }


OpsMonitorActor: Any = restartable(OpsMonitor)


def start_ops_monitor(settings: Settings) -> Any:
    """The deployment's monitor, created if missing, sampling."""
    return start_scheduled(OpsMonitorActor, MONITOR_NAME, settings)


async def ops_monitor(settings: Settings) -> Any:
    """The same from async code."""
    return await scheduled(OpsMonitorActor, MONITOR_NAME, settings)


async def publish_replica_totals(redis: Redis, totals: Callable[[], ReplicaTotals]) -> None:
    """A replica's loop: its totals into ``REPLICA_TOTALS`` every second, until cancelled."""

    async def publish() -> float:
        one = totals()
        await asyncio.wait_for(
            redis.hset(REPLICA_TOTALS, one.replica, json.dumps(one.to_json())), ANSWER_WITHIN_S
        )
        return SAMPLE_EVERY_S

    await repeat(publish, pause_after_failure_s=SAMPLE_EVERY_S, failure="replica totals not published",
                 logger=log, level=logging.DEBUG)  # fmt: skip


async def _gather_answers(calls: dict[Any, Awaitable[Any]]) -> dict[Any, Any]:
    """Each call's answer, or ``None`` for one that failed or took too long."""
    answers = await asyncio.gather(*calls.values(), return_exceptions=True)
    return {k: (None if isinstance(a, BaseException) else a) for k, a in zip(calls, answers, strict=True)}
