"""The nightly reconciliation: a Ray actor that reconciles yesterday at ``PAYRAY_RECON_AT`` (02:15 UTC), and
any day on demand (``POST /v1/reconciliation/runs``), one run at a time.

One named, detached, restartable actor per deployment. Its only state is a timer: runs live in
Postgres, so a scheduler that was down at 02:15 finds yesterday unreconciled when it comes back, and runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time as wall
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from payray.settings import Settings
from serve_app.flows.reconciliation import run_object
from serve_app.stores import reconciliation as reconciliation_db
from serve_app.workers.schedules import ServiceSchedule, restartable, scheduled, start_scheduled

log = logging.getLogger("payray.reconciliation")

#: The actor's name in Ray, as deployments already running know it (a new name would start a second scheduler
#: beside the old, detached one).
SCHEDULER_NAME = "recon_scheduler"
#: a failed nightly run is tried again this many times, after 10, 20, 30 … minutes
RETRIES = 5
RETRY_AFTER_S = 600.0


def next_run_at(now: datetime, at: time) -> datetime:
    """The first ``at`` (UTC) strictly after ``now``."""
    today = datetime.combine(now.date(), at, tzinfo=UTC)
    return today if today > now else today + timedelta(days=1)


def parse_at(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


class ReconciliationScheduler(ServiceSchedule):
    """Once started, catches up on yesterday if its run is missing or failed, then runs every night."""

    max_connections = 2

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = wall.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(settings)
        self._clock = clock
        self._sleep = sleep
        self._at = parse_at(settings.reconciliation_at)
        self._lock = asyncio.Lock()
        self._next: datetime | None = None
        self._scheduled_runs = 0

    async def run(self, day: str) -> dict[str, Any]:
        """Reconcile one UTC day (``YYYY-MM-DD``) now; the run as the API renders it."""
        reconciliation = (await self._parts()).reconciliation
        async with self._lock:
            return run_object(await reconciliation.run(date.fromisoformat(day)))

    async def status(self) -> dict[str, Any]:
        return {
            "at": self._settings.reconciliation_at,
            "next_run_at": self._next.isoformat() if self._next else None,
            "scheduled_runs": self._scheduled_runs,
        }

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _forever(self) -> None:
        await self._catch_up()
        while True:
            now = self._now()
            self._next = next_run_at(now, self._at)
            await self._sleep((self._next - now).total_seconds())
            await self._scheduled(self._next.date() - timedelta(days=1))

    async def _catch_up(self) -> None:
        now = self._now()
        if now < datetime.combine(now.date(), self._at, tzinfo=UTC):
            return  # tonight's run will do yesterday
        yesterday = now.date() - timedelta(days=1)
        if not await self._reconciled(yesterday):
            await self._scheduled(yesterday)

    async def _reconciled(self, day: date) -> bool:
        parts = await self._parts()
        async with parts.pool.connection() as conn:
            done = await reconciliation_db.run_of_day(conn, day)
        return done is not None and done["status"] == "succeeded"

    async def _scheduled(self, day: date) -> None:
        """Run ``day``; a failed run (the PSP down, say) is tried again a few times, further apart each time.

        Nothing here lets the schedule die: tomorrow's run comes regardless, and a person can run any day.
        """
        for attempt in range(1, RETRIES + 2):
            try:
                run = await self.run(day.isoformat())
            except Exception:
                log.exception("scheduled reconciliation of %s failed (attempt %d)", day, attempt)
                run = {"status": "failed"}
            if run.get("status") == "succeeded":
                self._scheduled_runs += 1
                log.info("reconciled %s: %s", day, run)
                return
            if attempt <= RETRIES:
                await self._sleep(RETRY_AFTER_S * attempt)
        log.error("gave up reconciling %s after %d attempts; run it by hand", day, RETRIES + 1)


ReconciliationSchedulerActor: Any = restartable(ReconciliationScheduler)


def start_reconciliation_scheduler(settings: Settings) -> Any:
    """The deployment's scheduler, created if missing, waiting for its next night."""
    return start_scheduled(ReconciliationSchedulerActor, SCHEDULER_NAME, settings)


async def reconciliation_scheduler(settings: Settings) -> Any:
    return await scheduled(ReconciliationSchedulerActor, SCHEDULER_NAME, settings)
