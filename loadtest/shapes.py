"""Load shapes as pure functions of elapsed time: how many users, spawned how fast, and when to stop.

Each takes the run's ceiling (``users``, ``spawn_rate``, ``run_time_s``) and never goes past it, so every run
is bounded in users and in time whatever the shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable

#: (target user count, spawn rate per second), or None: stop the run.
Tick = tuple[int, float] | None
Shape = Callable[[float, int, float, float], Tick]


def steady(t: float, users: int, spawn_rate: float, run_time_s: float) -> Tick:
    """All users, spawned at ``spawn_rate``, for the whole run."""
    return (users, spawn_rate) if t < run_time_s else None


def ramp(t: float, users: int, spawn_rate: float, run_time_s: float) -> Tick:
    """From one user to all of them over the first 80 % of the run, then hold: where does latency bend?"""
    if t >= run_time_s:
        return None
    share = min(1.0, t / (0.8 * run_time_s))
    return (max(1, math.ceil(users * share)), spawn_rate)


def spike(t: float, users: int, spawn_rate: float, run_time_s: float) -> Tick:
    """Black Friday: a fifth of the users, then all of them at once for the middle third, then back."""
    if t >= run_time_s:
        return None
    base = max(1, users // 5)
    in_spike = run_time_s / 3 <= t < 2 * run_time_s / 3
    # The crowd arrives within a second, however gently the base load was spawned.
    return (users, max(spawn_rate, float(users))) if in_spike else (base, max(spawn_rate, float(users)))


SHAPES: dict[str, Shape] = {"steady": steady, "ramp": ramp, "spike": spike}
