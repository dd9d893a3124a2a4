"""The emulator's notion of now, which tests may pin so daily settlement windows are deterministic."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Clock:
    """Wall time, or an override: frozen at a given instant, or running on from it."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._pinned: float | None = None
        self._pinned_at_wall = 0.0
        self._frozen = True

    def now(self) -> int:
        return int(self.now_float())

    def now_float(self) -> float:
        if self._pinned is None:
            return self._wall()
        if self._frozen:
            return self._pinned
        return self._pinned + (self._wall() - self._pinned_at_wall)

    def set(self, now: float | None, *, frozen: bool = True) -> None:
        """Pin the clock at ``now`` (None: back to wall time)."""
        self._pinned = now
        self._pinned_at_wall = self._wall()
        self._frozen = frozen

    def state(self) -> dict[str, Any]:
        return {"now": self.now(), "overridden": self._pinned is not None, "frozen": self._frozen}
