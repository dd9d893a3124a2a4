"""Clients' open requests: each with its deadline, simulated without a timer per request.

A client waits for its request inside its own process. When it hangs up, or the replica serving it dies, Ray
Serve cancels the request at its next ``await``; here the client's process is interrupted inside the
request's generators, which unwind (their ``finally`` blocks release what they held) as a cancelled handler
does. Every interruption goes through here, so a request is cut at most once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy


@dataclass(slots=True)
class Waiting:
    """One request a client is waiting for, until it is answered or cut."""

    deadline: float
    client: simpy.Process
    answered: bool = False


#: why a request was cut: its client hung up, or the replica serving it died (the client sees a 502)
HUNG_UP, REPLICA_DIED = "hung_up", "replica_died"


class Connections:
    """Every deadline is its request's start plus the one client timeout, so they come in order: one watcher
    sleeps until the oldest unanswered one and hangs up if it passes. Nearly every request is answered long
    before, so the watcher wakes about once per timeout, not once per request."""

    def __init__(self, env: simpy.Environment, timeout_s: float) -> None:
        self.env, self.timeout_s = env, timeout_s
        self.pending: deque[Waiting] = deque()
        self.open: dict[simpy.Process, Waiting] = {}
        self.idle: simpy.Event | None = None

    def send(self) -> Waiting:
        """Called by the client about to send a request; it calls ``answered`` when the request returns."""
        client = self.env.active_process
        assert client is not None
        waiting = Waiting(self.env.now + self.timeout_s, client)
        self.pending.append(waiting)
        self.open[client] = waiting
        if self.idle is not None:
            self.idle.succeed()
            self.idle = None
        return waiting

    def answered(self, waiting: Waiting) -> None:
        waiting.answered = True
        self.open.pop(waiting.client, None)

    def cut(self, client: simpy.Process, why: str) -> None:
        """Interrupt ``client``'s open request, if it still has one."""
        waiting = self.open.pop(client, None)
        if waiting is not None and not waiting.answered:
            waiting.answered = True
            client.interrupt(why)

    def run(self) -> Generator[simpy.Event, Any, None]:
        pending, env = self.pending, self.env
        while True:
            while pending:
                head = pending[0]
                if head.answered:
                    pending.popleft()
                elif head.deadline <= env.now:
                    pending.popleft()
                    self.cut(head.client, HUNG_UP)
                else:
                    break
            if pending:
                yield env.timeout(pending[0].deadline - env.now)
            else:
                self.idle = env.event()
                yield self.idle
