"""What payray's state machines share: a transition table, and the questions every driver asks of it.

A machine is data: ``(state, event) -> (next state, commands)``, the states it ends in, how a persisted state
goes on after a crash (``resume``), and the steps that follow a transition with no IO at all (``automatic``).
``payray.charge`` and ``payray.refund`` each build one; the service's asyncio flows and the simulator's
SimPy drivers ask it, so no driver keeps a rule of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from payray.errors import IllegalTransition

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)
C = TypeVar("C", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Transition(Generic[S, E, C]):
    """One step of a machine: what to persist (``source --event--> target``) and then what to run."""

    source: S
    event: E
    target: S
    commands: tuple[C, ...]


@dataclass(frozen=True, slots=True)
class Resumption(Generic[E, C]):
    """How a persisted state goes on: by an event, or by running again the commands that led into it. By
    neither when the state is settled: all that is left is to answer."""

    event: E | None = None
    commands: tuple[C, ...] = ()


@dataclass(frozen=True, eq=False)
class Machine(Generic[S, E, C]):
    """A state machine as data, and the pure functions of it that the drivers call."""

    states: type[S]
    events: type[E]
    #: (state, event) -> (next state, commands to run once the transition is persisted)
    transitions: Mapping[tuple[S, E], tuple[S, tuple[C, ...]]]
    terminal: frozenset[S]
    #: states that resume by an event of their own rather than by commands
    resume_events: Mapping[S, E]
    #: states that resume by running again the commands of the transition that led into them
    resume_commands: Mapping[S, tuple[C, ...]]
    #: commands that are no IO at all: the event that follows them at once, in the same transaction
    automatic: Mapping[C, E] = field(default_factory=dict)
    #: commands whose whole job is to answer the client with the state the transition left
    answers: frozenset[C] = frozenset()
    #: the API's ``status`` of each settled state; every other state answers ``pending``
    statuses: Mapping[S, str] = field(default_factory=dict)

    def state(self, value: S | str) -> S:
        return value if isinstance(value, self.states) else self.states(value)

    def event(self, value: E | str) -> E:
        return value if isinstance(value, self.events) else self.events(value)

    def step(self, state: S | str, event: E | str) -> Transition[S, E, C]:
        """The transition for ``event`` in ``state``; raises ``IllegalTransition`` if there is none."""
        source, ev = self.state(state), self.event(event)
        try:
            target, commands = self.transitions[(source, ev)]
        except KeyError:
            raise IllegalTransition(source.value, ev.value) from None
        return Transition(source, ev, target, commands)

    def allowed_events(self, state: S | str) -> list[E]:
        source = self.state(state)
        return [event for (s, event) in self.transitions if s == source]

    def is_terminal(self, state: S | str) -> bool:
        return self.state(state) in self.terminal

    def resume(self, state: S | str) -> Resumption[E, C]:
        """How a persisted, unfinished state goes on; an empty ``Resumption`` for a settled one."""
        source = self.state(state)
        event = self.resume_events.get(source)
        if event is not None:
            return Resumption(event=event)
        return Resumption(commands=self.resume_commands.get(source, ()))

    def with_automatic(self, chain: Sequence[Transition[S, E, C]]) -> tuple[Transition[S, E, C], ...]:
        """``chain`` and the transitions that follow its last one without IO (``automatic``): they are
        persisted with it, in one transaction."""
        done = tuple(chain)
        while len(done[-1].commands) == 1 and done[-1].commands[0] in self.automatic:
            done += (self.step(done[-1].target, self.automatic[done[-1].commands[0]]),)
        return done

    def chain(self, state: S | str, event: E | str) -> tuple[Transition[S, E, C], ...]:
        """What one event persists in one transaction: its transition and the automatic ones after it."""
        return self.with_automatic((self.step(state, event),))

    def public_status(self, state: S | str) -> str:
        """The API's ``status`` for an object in ``state``: ``succeeded``, ``failed`` or ``pending``."""
        return self.statuses.get(self.state(state), "pending")

    def decides_answer(self, transition: Transition[S, E, C]) -> bool:
        """Whether ``transition`` leaves nothing to do but answer: no command, or one of ``answers``."""
        return not transition.commands or transition.commands[0] in self.answers
