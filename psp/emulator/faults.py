"""Fault injection, set at run time: what to break, how often, and a record of every fault injected.

All draws come from one ``random.Random(seed)`` and happen in a fixed order per request, and a rate of zero
draws nothing, so a seed and a request sequence reproduce exactly the same faults.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from psp.emulator.cards import DECLINES

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Millis = Annotated[float, Field(ge=0.0, le=600_000.0)]
MAX_INJECTIONS = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedLatency(_Strict):
    dist: Literal["fixed"]
    ms: Millis


class UniformLatency(_Strict):
    dist: Literal["uniform"]
    min_ms: Millis = 0.0
    max_ms: Millis

    @model_validator(mode="after")
    def _ordered(self) -> UniformLatency:
        if self.min_ms > self.max_ms:
            raise ValueError("min_ms must not exceed max_ms")
        return self


class NormalLatency(_Strict):
    dist: Literal["normal"]
    mean_ms: Millis
    stddev_ms: Millis = 0.0


class ExponentialLatency(_Strict):
    dist: Literal["exponential"]
    mean_ms: Annotated[float, Field(gt=0.0, le=600_000.0)]


Latency = Annotated[
    FixedLatency | UniformLatency | NormalLatency | ExponentialLatency, Field(discriminator="dist")
]


class Outage(_Strict):
    """A window of wall-clock unix time during which every matching request fails."""

    start: float
    end: float
    mode: Literal["error", "reset"] = "error"

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.end <= self.start:
            raise ValueError("an outage must end after it starts")
        return self


class FaultConfig(_Strict):
    latency_ms: Latency | None = None
    error_rate: Rate = 0.0
    error_status: Literal[429, 500, 502, 503, 504] = 503
    should_retry: bool | None = None
    timeout_after_capture_rate: Rate = 0.0
    hold_ms: Millis = 30_000.0
    reset_before_rate: Rate = 0.0
    reset_after_rate: Rate = 0.0
    truncated_json_rate: Rate = 0.0
    decline_rate: Rate = 0.0
    decline_code: str = "generic_decline"
    outages: list[Outage] = Field(default_factory=list)
    only_paths: list[str] | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _known_decline(self) -> FaultConfig:
        if self.decline_code not in DECLINES:
            raise ValueError(f"decline_code must be one of {sorted(DECLINES)}")
        return self


PreFault = Literal["outage_error", "outage_reset", "reset_before", "error"]
PostFault = Literal["timeout_after_commit", "reset_after", "truncated_json"]


@dataclass(frozen=True)
class Injection:
    at: float
    kind: str
    method: str
    path: str
    request_id: str | None
    idempotency_key: str | None
    object_id: str | None = None
    status: int | None = None


class Faults:
    """The active configuration, the seeded random source, and the injection record."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.injections: deque[Injection] = deque(maxlen=MAX_INJECTIONS)
        self.counts: Counter[str] = Counter()
        self.configure(FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed if config.seed is not None else 0)

    def clear_record(self) -> None:
        self.injections.clear()
        self.counts.clear()

    def applies(self, path: str) -> bool:
        only = self.config.only_paths
        return only is None or any(path.startswith(prefix) for prefix in only)

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def before(self) -> PreFault | None:
        """Faults that strike before the operation runs (nothing is committed)."""
        now = self._wall()
        for outage in self.config.outages:
            if outage.start <= now < outage.end:
                return "outage_reset" if outage.mode == "reset" else "outage_error"
        if self._draw(self.config.reset_before_rate):
            return "reset_before"
        if self._draw(self.config.error_rate):
            return "error"
        return None

    def latency_s(self) -> float:
        lat = self.config.latency_ms
        if lat is None:
            return 0.0
        if isinstance(lat, FixedLatency):
            ms = lat.ms
        elif isinstance(lat, UniformLatency):
            ms = self.rng.uniform(lat.min_ms, lat.max_ms)
        elif isinstance(lat, NormalLatency):
            ms = self.rng.gauss(lat.mean_ms, lat.stddev_ms)
        else:
            ms = self.rng.expovariate(1.0 / lat.mean_ms)
        return max(0.0, ms) / 1000.0

    def decline(self) -> str | None:
        return self.config.decline_code if self._draw(self.config.decline_rate) else None

    def after(self, method: str) -> PostFault | None:
        """Faults that strike after the operation committed: the client does not learn the outcome."""
        if method == "POST" and self._draw(self.config.timeout_after_capture_rate):
            return "timeout_after_commit"
        if self._draw(self.config.reset_after_rate):
            return "reset_after"
        if self._draw(self.config.truncated_json_rate):
            return "truncated_json"
        return None

    def record(self, injection: Injection) -> None:
        self.injections.append(injection)
        self.counts[injection.kind] += 1

    def report(self, limit: int, kind: str | None = None) -> dict[str, Any]:
        rows = [asdict(i) for i in self.injections if kind is None or i.kind == kind]
        return {"object": "list", "total": len(rows), "counts": dict(self.counts), "data": rows[-limit:]}
