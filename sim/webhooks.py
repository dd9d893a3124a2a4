"""The PSP's webhook deliveries, simulated: delay, drops, duplicates, reordering, and redelivery after a 409.

Deliveries wait in one queue in due order. Most are no news by the time they are due: the request that made
the charge heard the PSP's answer first, and a ``charge.*`` event about a charge past the PSP can only be
acknowledged, then or later. Those are acknowledged as soon as that is so, without a timer each; one alarm
is set for the earliest delivery that may still matter. A delivery that matters is handled when due, in its
own process, by the same handlers as before (``SimService.webhook``, ``SimRefunds.webhook``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Generator
from typing import Any

import simpy

from sim.config import Webhooks
from sim.refunds import SimRefunds
from sim.service import SimService

#: deliveries of one event before the PSP gives up on it
ATTEMPTS = 8

#: (due, order of sending, charge id or refund key, outcome, delay it waited, attempt, the PSP sending it)
Delivery = tuple[float, int, str, str, float, int, str]


class WebhookDeliveries:
    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        config: Webhooks,
        service: SimService,
        refunds: SimRefunds,
        counts: Counter[str],
    ) -> None:
        self.env, self.rng, self.c = env, rng, config
        self.service, self.refunds, self.counts = service, refunds, counts
        self.queue: list[Delivery] = []
        self.sent = itertools.count()
        self.alarm_at = math.inf

    def announce(self, target: str, outcome: str, psp: str = "stripe") -> None:
        """A PSP's hook: ``(charge id, "captured" | "declined")`` or ``(refund key, "refunded")``."""
        faulty = self.service.faults_on
        if faulty and self.rng.random() < self.c.drop_rate:
            self.counts["dropped"] += 1
            return
        copies = 2 if faulty and self.rng.random() < self.c.duplicate_rate else 1
        for _ in range(copies):
            self._send(self.c.delay_s + self.rng.random() * self.c.reorder_s, target, outcome, 1, psp)

    def _send(self, delay: float, target: str, outcome: str, attempt: int, psp: str) -> None:
        due = self.env.now + delay
        heapq.heappush(self.queue, (due, next(self.sent), target, outcome, delay, attempt, psp))
        if due < self.alarm_at:
            self._set_alarm(due)

    def _set_alarm(self, at: float) -> None:
        self.alarm_at = at
        self.env.timeout(at - self.env.now).callbacks.append(lambda _: self._ring(at))

    def _ring(self, at: float) -> None:
        if at != self.alarm_at:
            return  # an earlier delivery set a newer alarm
        self.alarm_at = math.inf
        queue, now = self.queue, self.env.now
        while queue:
            due, _, target, outcome, delay, attempt, psp = queue[0]
            news = outcome == "refunded" or self.service.waits_for_psp(target, psp)
            if news and due > now:
                self._set_alarm(due)
                return
            heapq.heappop(queue)
            self.counts["delivered"] += 1
            if news:
                self.env.process(self._handle(delay, target, outcome, attempt, psp))

    def _handle(
        self, delay: float, target: str, outcome: str, attempt: int, psp: str
    ) -> Generator[Any, Any, None]:
        if outcome == "refunded":
            delivered = yield from self.refunds.webhook(target, psp)
        else:
            delivered = yield from self.service.webhook(target, outcome, psp)
        if not delivered and attempt < ATTEMPTS:  # a 409: the PSP tries again, waiting twice as long
            self.counts["retried"] += 1
            self._send(2 * delay, target, outcome, attempt + 1, psp)
