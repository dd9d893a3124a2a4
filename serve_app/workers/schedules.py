"""The deployment's scheduled actors (the recovery janitor, the reconciliation scheduler): one named,
detached, restartable actor each, created on first use, by ``payray up`` or by an API replica when a plain
``serve deploy`` left them out, then started (``start`` is idempotent)."""

from __future__ import annotations

from typing import Any

import ray

from payray.settings import Settings


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
