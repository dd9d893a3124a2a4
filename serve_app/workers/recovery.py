"""The recovery sweeper: a Ray actor that runs recovery (``serve_app/flows/recovery.py``) at start-up and
then on a schedule, keeps the notification relay and consumer running after Ray restarts them, and deletes
events past their retention (``serve_app/stores/events.py``).

One named, detached, restartable actor per deployment; its state is only a timer, everything it acts on is in
Postgres. ``sweep`` runs a pass on demand (``POST /v1/admin/recovery/sweep``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from payray.settings import Settings
from serve_app.stores.events import delete_expired
from serve_app.workers.notifications import RELAY_NAME, consumer_name
from serve_app.workers.schedules import ServiceSchedule, repeat, restartable, scheduled, start_scheduled

log = logging.getLogger("payray.recovery")

#: The actor's name in Ray, as deployments already running know it (a new name would start a second sweeper
#: beside the old, detached one).
SWEEPER_NAME = "recovery_janitor"


class RecoverySweeper(ServiceSchedule):
    """Sweeps now and then every ``recovery_interval_s`` once started."""

    max_connections = 4

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._lock = asyncio.Lock()
        self._sweeps = 0
        self._last: dict[str, Any] = {}

    async def sweep(self, grace_s: float | None = None) -> dict[str, Any]:
        """One pass over what has been stuck for ``grace_s`` (default: the configured grace)."""
        recovery = (await self._parts()).recovery
        grace = self._settings.recovery_grace_s if grace_s is None else grace_s
        async with self._lock:  # one pass at a time; a second caller waits and then runs its own
            started = time.perf_counter()
            counts = await recovery.sweep(grace)
            self._sweeps += 1
            self._last = {
                "counts": counts,
                "seconds": round(time.perf_counter() - started, 3),
                "at": time.time(),
            }
        return self._last

    async def stats(self) -> dict[str, Any]:
        return {"sweeps": self._sweeps, "last": self._last, "running": self._task is not None}

    async def _forever(self) -> None:
        """Sweep now, then ``recovery_interval_s`` after each pass ends, whether it worked or not."""
        interval = self._settings.recovery_interval_s
        await repeat(
            self._pass, pause_after_failure_s=interval, failure="recovery sweep failed", logger=log,
            level=logging.ERROR,
        )  # fmt: skip

    async def _pass(self) -> float:
        await self._keep_notifications_running()
        await self.sweep()
        await self.expire_events()
        return self._settings.recovery_interval_s

    async def expire_events(self) -> int:
        """Keep the outbox bounded: events past their retention go once delivered; how many went."""
        async with (await self._parts()).pool.connection() as conn:
            return await delete_expired(conn)

    async def _keep_notifications_running(self) -> None:
        """A relay or consumer that Ray restarted comes back idle; ``start`` (idempotent) sets it going."""
        for name in (RELAY_NAME, consumer_name(0)):
            try:
                handle = ray.get_actor(name, namespace=self._settings.ray_namespace)
            except ValueError:
                continue  # not deployed
            await handle.start.remote()


RecoverySweeperActor: Any = restartable(RecoverySweeper)


def start_recovery_sweeper(settings: Settings) -> Any:
    """The deployment's recovery sweeper, created if missing, sweeping on its schedule."""
    return start_scheduled(RecoverySweeperActor, SWEEPER_NAME, settings)


async def recovery_sweeper(settings: Settings) -> Any:
    return await scheduled(RecoverySweeperActor, SWEEPER_NAME, settings)
