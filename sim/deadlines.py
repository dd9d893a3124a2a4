"""Clients' timeouts, simulated without a timer per request.

A client waits for its request inside its own process. When it hangs up, Ray Serve cancels the request at its
next ``await``; here the client's process is interrupted inside the request's generators, which unwind (their
``finally`` blocks release what they held) as a cancelled handler does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy


@dataclass(slots=True)
class Waiting:
    deadline: float
    client: simpy.Process
    answered: bool = False


class Deadlines:
    """Every deadline is its request's start plus the one client timeout, so they come in order: one watcher
    sleeps until the oldest unanswered one and interrupts its client if it passes. Nearly every request is
    answered long before, so the watcher wakes about once per timeout, not once per request."""

    def __init__(self, env: simpy.Environment, timeout_s: float) -> None:
        self.env, self.timeout_s = env, timeout_s
        self.pending: deque[Waiting] = deque()
        self.idle: simpy.Event | None = None

    def watch(self) -> Waiting:
        """Called by the client about to send a request; it marks the result answered when it returns."""
        client = self.env.active_process
        assert client is not None
        waiting = Waiting(self.env.now + self.timeout_s, client)
        self.pending.append(waiting)
        if self.idle is not None:
            self.idle.succeed()
            self.idle = None
        return waiting

    def run(self) -> Generator[simpy.Event, Any, None]:
        pending, env = self.pending, self.env
        while True:
            while pending:
                head = pending[0]
                if head.answered:
                    pending.popleft()
                elif head.deadline <= env.now:
                    pending.popleft()
                    head.client.interrupt("timeout")
                else:
                    break
            if pending:
                yield env.timeout(pending[0].deadline - env.now)
            else:
                self.idle = env.event()
                yield self.idle
