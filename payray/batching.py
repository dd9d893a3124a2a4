"""Natural batching: one call in flight per destination; what arrives meanwhile travels together next.

An actor call costs the same CPU whether it carries one item or forty (bench/RESULTS.md), so under load the
items queued behind a call in flight go out as one list. With no load, an item leaves at once: no timer, no
added latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class NaturalBatcher(Generic[Item, Result]):
    """Sends items through ``send`` (a list in, one result per item out, in order)."""

    def __init__(
        self, send: Callable[[list[Item]], Awaitable[Sequence[Result]]], max_batch: int = 256
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.calls = 0

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self.calls += 1
                try:
                    results = await self._send([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
                except BaseException as exc:  # every caller in the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._drainer = None
