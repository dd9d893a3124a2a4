"""What the background workers share: one loop each, started idempotently, never ended by a failed pass.

The deployment's scheduled actors (the recovery sweeper, the reconciliation scheduler) are one named,
detached, restartable actor each, created on first use, by ``payray up`` or by an API replica when a plain
``serve deploy`` left them out, then started (``start`` is idempotent). They run on the service's parts,
opened on first use. The outbox relay and the notification consumers share the loop, not the parts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import ray

from payray.settings import Settings
from serve_app.parts import Parts

#: Ray restarts a worker that dies, and retries the calls it had in flight; it holds no CPU of its own.
RESTARTABLE: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1, "num_cpus": 0}


def restartable(worker: type) -> Any:
    """The worker class as a Ray actor class, restarted whenever it dies."""
    return ray.remote(**RESTARTABLE)(worker)


async def repeat(
    one_pass: Callable[[], Awaitable[float]],
    *,
    pause_after_failure_s: float,
    failure: str,
    logger: logging.Logger,
    level: int = logging.WARNING,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> NoReturn:
    """Run ``one_pass`` again and again, pausing as long as each pass returns (0: go straight on).

    A pass that raises is logged (``failure``, at ``level``, with its traceback) and followed by a pause of
    ``pause_after_failure_s``: only cancelling the loop ends it.
    """
    while True:
        try:
            pause = await one_pass()
        except Exception:
            logger.log(level, failure, exc_info=True)
            pause = pause_after_failure_s
        if pause > 0:
            await sleep(pause)


class ScheduledActor(abc.ABC):
    """An actor whose work is one loop (``_forever``), started by ``start`` and ended by ``stop``."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Run the loop unless it runs already; idempotent, so a restarted actor is set going the same way."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._forever())
        return True

    async def stop(self) -> bool:
        """End the loop; what its pass was doing is left as a crash would leave it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return True

    @abc.abstractmethod
    async def _forever(self) -> None: ...


class ServiceSchedule(ScheduledActor):
    """A scheduled actor that works on the service's parts, over at most ``max_connections`` to Postgres."""

    max_connections = 2

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._opened: Parts | None = None

    async def _parts(self) -> Parts:
        if self._opened is None:
            # idle for hours between runs: a connection a Postgres restart broke meanwhile is replaced
            self._opened = await Parts.open(
                self._settings, max_connections=self.max_connections, check_connections=True
            )
        return self._opened

    async def close(self) -> None:
        """Stop the loop and close the parts."""
        await self.stop()
        if self._opened is not None:
            await self._opened.aclose()


def _detached(actor_class: Any, name: str, settings: Settings) -> Any:
    return actor_class.options(
        name=name, namespace=settings.ray_namespace, get_if_exists=True, lifetime="detached"
    ).remote(settings)


def start_scheduled(actor_class: Any, name: str, settings: Settings) -> Any:
    handle = _detached(actor_class, name, settings)
    ray.get(handle.start.remote())
    return handle


async def scheduled(actor_class: Any, name: str, settings: Settings) -> Any:
    """The same from async code."""
    handle = _detached(actor_class, name, settings)
    await handle.start.remote()
    return handle
