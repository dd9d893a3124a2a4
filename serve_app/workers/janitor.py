"""The recovery janitor: a Ray actor that sweeps at start-up and then on a schedule (see ``recovery``), and
keeps the notification relay and consumer running after Ray restarts them.

One named, detached, restartable actor per deployment (``recovery_janitor``); its state is only a timer,
everything it acts on is in Postgres. ``sweep`` runs a pass on demand (``POST /v1/admin/recovery/sweep``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from payray.settings import Settings
from serve_app.flows.recovery import Recovery
from serve_app.parts import Parts
from serve_app.workers.notifications import RELAY_NAME, consumer_name
from serve_app.workers.schedules import scheduled, start_scheduled

log = logging.getLogger("payray.janitor")

JANITOR_NAME = "recovery_janitor"


class Janitor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._parts: Parts | None = None
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sweeps = 0
        self._last: dict[str, Any] = {}

    async def start(self) -> bool:
        """Sweep now and then every ``recovery_interval_s``; idempotent."""
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._forever())
        return True

    async def sweep(self, grace_s: float | None = None) -> dict[str, Any]:
        """One pass over what has been stuck for ``grace_s`` (default: the configured grace)."""
        recovery = await self._build()
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
        return {"sweeps": self._sweeps, "last": self._last, "running": self._loop is not None}

    async def _forever(self) -> None:
        while True:
            try:
                await self._keep_notifications_running()
                await self.sweep()
            except Exception:  # never let the schedule die: the next pass tries again
                log.exception("recovery sweep failed")
            await asyncio.sleep(self._settings.recovery_interval_s)

    async def _keep_notifications_running(self) -> None:
        """A relay or consumer that Ray restarted comes back idle; ``start`` (idempotent) sets it going."""
        for name in (RELAY_NAME, consumer_name(0)):
            try:
                handle = ray.get_actor(name, namespace=self._settings.ray_namespace)
            except ValueError:
                continue  # not deployed
            await handle.start.remote()

    async def _build(self) -> Recovery:
        if self._parts is None:
            self._parts = await Parts.open(self._settings, max_connections=4)
        return self._parts.recovery

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._parts is not None:
            await self._parts.aclose()


JanitorActor: Any = ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)(Janitor)


def start_janitor(settings: Settings) -> Any:
    """The deployment's janitor, created if missing, sweeping on its schedule."""
    return start_scheduled(JanitorActor, JANITOR_NAME, settings)


async def janitor(settings: Settings) -> Any:
    return await scheduled(JanitorActor, JANITOR_NAME, settings)
