"""Where a merchant's wallet lives: a stable slot per merchant, and a fixed host per slot.

Wallets are virtual actors: many live inside each of a fixed pool of wallet-host actors. A merchant maps to
one of ``slots`` slots by CRC-32 of its id (stable across processes and restarts, unlike ``hash``, which is
salted per process), and a slot to host ``slot % hosts``. Slots far outnumber hosts, so a host owns many
slots, and every replica, background actor and the simulator find the same host for a merchant without
asking anyone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DEFAULT_SLOTS = 4096


@dataclass(frozen=True, slots=True)
class SlotMap:
    hosts: int
    slots: int = DEFAULT_SLOTS

    def __post_init__(self) -> None:
        if self.hosts < 1:
            raise ValueError(f"hosts must be at least 1, got {self.hosts}")
        if self.slots < self.hosts:
            raise ValueError(f"slots ({self.slots}) must be at least hosts ({self.hosts})")

    def slot_of(self, merchant_id: str) -> int:
        return zlib.crc32(merchant_id.encode("utf-8")) % self.slots

    def host_of_slot(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside 0..{self.slots - 1}")
        return slot % self.hosts

    def host_of(self, merchant_id: str) -> int:
        """The index of the host that owns ``merchant_id``'s wallet."""
        return self.slot_of(merchant_id) % self.hosts
