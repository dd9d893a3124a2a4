"""What this replica knows of its recent charges, so the PSP's ``charge.succeeded`` for one is no news.

Every charge brings its webhook back in, usually while or just after its own request finishes. A charge
past the PSP (captured, booked, declined, failed: states it never leaves for the PSP's sake again) has
nothing to learn from a ``charge.succeeded`` or ``charge.failed``; the webhook receiver asks here first and
answers such an event without a database transaction. One this replica is still driving is waited for
(briefly) rather than refused, so the PSP need not deliver it again. A miss (another replica's charge, one
forgotten) takes the ordinary path: nothing here is needed for correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator

from payray.charge import ChargeState

#: States from which a PSP outcome event changes nothing: the PSP's answer is already recorded.
_BEFORE_PSP_ANSWER = frozenset({ChargeState.CREATED, ChargeState.PSP_PENDING, ChargeState.UNKNOWN})


class RecentOutcomes:
    def __init__(self, capacity: int = 50_000, wait_s: float = 5.0) -> None:
        self._past_psp: OrderedDict[str, None] = OrderedDict()
        self._driving: dict[str, asyncio.Event] = {}
        self._capacity = capacity
        self._wait_s = wait_s

    @contextlib.asynccontextmanager
    async def driving(self, payment_id: str) -> AsyncIterator[None]:
        """Mark ``payment_id`` as driven by this replica for the block."""
        done = self._driving[payment_id] = asyncio.Event()
        try:
            yield
        finally:
            del self._driving[payment_id]
            done.set()

    def saw(self, payment_id: str, state: str) -> None:
        if ChargeState(state) in _BEFORE_PSP_ANSWER:
            return
        self._past_psp[payment_id] = None
        if len(self._past_psp) > self._capacity:
            self._past_psp.popitem(last=False)

    async def past_psp(self, payment_id: str) -> bool:
        """Whether ``payment_id`` is known here to be past the PSP's answer, waiting for it if this replica
        is driving it now."""
        done = self._driving.get(payment_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self._wait_s)
        return payment_id in self._past_psp
