"""Which idle wallets a host lets go: least recently used first, never one that is busy.

A host keeps at most ``capacity`` wallets in memory, and none idle for longer than ``idle_s``. A wallet that
holds a reservation or has a posting in flight is *busy* and is never passivated, however old: its state is
not yet all in the ledger. Everything here is pure (time is a parameter), so the host and the simulator share
the policy and tests drive it without Ray or a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class WalletCache(Generic[V]):
    """Entries by key in least-recently-used order, with the time each was last used."""

    def __init__(self, capacity: int, idle_s: float, busy: Callable[[V], bool]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if idle_s <= 0:
            raise ValueError(f"idle_s must be positive, got {idle_s}")
        self.capacity = capacity
        self.idle_s = idle_s
        self._busy = busy
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self.passivated = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def values(self) -> list[V]:
        return [value for value, _ in self._entries.values()]

    def items(self) -> list[tuple[str, V]]:
        return [(key, value) for key, (value, _) in self._entries.items()]

    def get(self, key: str, now: float) -> V | None:
        """The entry, marked as just used; ``None`` if it is not held."""
        held = self._entries.get(key)
        if held is None:
            return None
        self._entries[key] = (held[0], now)
        self._entries.move_to_end(key)
        return held[0]

    def put(self, key: str, value: V, now: float) -> list[str]:
        """Hold ``value`` as just used; returns the keys passivated to stay within capacity."""
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        return self._evict(now, over_capacity_only=True)

    def trim(self, now: float) -> list[str]:
        """Passivate the least recently used idle entries beyond capacity (what busy ones held back)."""
        return self._evict(now, over_capacity_only=True)

    def sweep(self, now: float) -> list[str]:
        """Passivate every idle entry unused for ``idle_s``, and any beyond capacity; returns their keys."""
        return self._evict(now, over_capacity_only=False)

    def _evict(self, now: float, *, over_capacity_only: bool) -> list[str]:
        excess = len(self._entries) - self.capacity
        if over_capacity_only and excess <= 0:
            return []
        gone: list[str] = []
        for key, (value, used) in self._entries.items():  # oldest first; stops at the first to keep
            if over_capacity_only and excess - len(gone) <= 0:
                break
            if not over_capacity_only and excess - len(gone) <= 0 and now - used < self.idle_s:
                break  # the rest were used more recently still
            if not self._busy(value):
                gone.append(key)
        for key in gone:
            del self._entries[key]
        self.passivated += len(gone)
        return gone
