"""One simulation run: clients, the service and its dependencies under faults, then a quiet phase, then the
invariants. Everything random comes from one ``random.Random(seed)``, drawn in SimPy's deterministic event
order, so the same seed and config give the same run and byte-identical JSON.
"""

from __future__ import annotations

import bisect
import functools
import json
import random
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from payray.gc_pause import cyclic_gc_paused
from payray.routing import PSPS
from sim.config import AUTHORIZATION_S, SimConfig
from sim.connections import HUNG_UP, Connections
from sim.invariants import (
    INVARIANTS,
    Nets,
    Violation,
    check,
    differences,
    differing,
    ledger_nets,
    psp_net,
)
from sim.refunds import SimRefunds
from sim.service import SimCharge, SimService
from sim.webhooks import WebhookDeliveries
from sim.world import FastKeys, SimDatabase, SimPsp

FINAL = frozenset({"succeeded", "declined", "failed", "authorized"})
REFUND_FINAL = frozenset({"succeeded", "failed", "refused"})
SETTLE_FINAL = frozenset({"succeeded", "canceled", "failed", "refused"})


@dataclass
class Stats:
    answers: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    attempts: int = 0
    retries: int = 0
    #: per simulated second: orders finished, requests sent, connections waited for
    finished: Counter[int] = field(default_factory=Counter)
    sent: Counter[int] = field(default_factory=Counter)
    queue: dict[int, int] = field(default_factory=dict)
    replica_queue: dict[int, int] = field(default_factory=dict)
    host_queue: dict[int, int] = field(default_factory=dict)
    webhooks: Counter[str] = field(default_factory=Counter)
    refunds: Counter[str] = field(default_factory=Counter)
    #: the merchants' moves on authorizations, and their answers: ``capture:succeeded``, ``cancel:canceled``…
    settles: Counter[str] = field(default_factory=Counter)


@dataclass
class RunResult:
    scenario: str
    config: SimConfig
    stats: Stats
    violations: list[Violation]
    first_history: list[tuple[float, str, str, str, str]]
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> str:
        """Stable bytes for a seed and config: sorted keys, rounded floats, no wall-clock figures."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def as_dict(self) -> dict[str, Any]:
        return _rounded(
            {
                "scenario": self.scenario,
                "seed": self.config.seed,
                "config": self.config.as_dict(),
                **self.summary,
                "violations": {
                    name: sum(v.invariant == name for v in self.violations) for name in INVARIANTS
                },
                "first_violation": None
                if not self.violations
                else {
                    "invariant": self.violations[0].invariant,
                    "charge": self.violations[0].charge,
                    "detail": self.violations[0].detail,
                    "history": [list(step) for step in self.first_history],
                },
                "timeline": {
                    "finished_per_s": _series(self.stats.finished),
                    "sent_per_s": _series(self.stats.sent),
                    "db_queue": _series(Counter(self.stats.queue)),
                    "replica_queue": _series(Counter(self.stats.replica_queue)),
                    "host_queue": _series(Counter(self.stats.host_queue)),
                },
                "ok": self.ok,
            }
        )


def _series(counts: Counter[int]) -> list[int]:
    return [counts.get(second, 0) for second in range(max(counts, default=-1) + 1)]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Simulation:
    def __init__(
        self, config: SimConfig, scenario: str = "custom", on_progress: Callable[[int], None] | None = None
    ):
        self.config, self.scenario = config, scenario
        self.env = simpy.Environment()
        self.rng = random.Random(config.seed)
        #: every PSP payray routes to; ``psp`` is Stripe's, the one PSP of a single-PSP run
        self.psps = {name: SimPsp(self.env, self.rng, config, name) for name in PSPS}
        self.psp = self.psps["stripe"]
        self.db = SimDatabase(self.env, config)
        self.fast_keys = FastKeys()
        self.connections = Connections(self.env, config.client.timeout_s)
        self.service = SimService(
            self.env, self.rng, config, self.psps, self.db, self.fast_keys, self.connections
        )
        self.refunds = SimRefunds(self.service)
        self.stats = Stats()
        self.on_progress = on_progress
        self.arrivals_done = self.env.event()
        self.merchants = [f"acct_{m:03d}" for m in range(config.load.merchants)]
        self.webhooks = WebhookDeliveries(
            self.env, self.rng, config.webhooks, self.service, self.refunds, self.stats.webhooks
        )
        for name, psp in self.psps.items():
            psp.on_event.append(functools.partial(self.webhooks.announce, psp=name))
        #: after the quiet phase, authorizations wait out their 7 days: no sampling, an idle janitor sleeps
        self.waiting_out = False

    # -- processes -----------------------------------------------------------------------------------------

    def _rate(self) -> float:
        load = self.config.load
        spiking = load.spike_at <= self.env.now < load.spike_at + load.spike_s
        return load.rate * (load.spike_factor if spiking else 1.0)

    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        for i in range(self.config.load.charges):
            yield self.env.timeout(self.rng.expovariate(self._rate()))
            self.env.process(self._order(i))
            if self.on_progress is not None and i % 10_000 == 0:
                self.on_progress(i)
        self.arrivals_done.succeed()

    def _order(self, i: int) -> Generator[simpy.Event, Any, None]:
        """One customer's order: the first request, then retries after timeouts, 409s and 5xx."""
        c = self.config.client
        merchant = self.merchants[i % len(self.merchants)]
        amount = 100 + self.rng.randrange(99_900)
        share = self.config.load.manual_share
        manual = bool(share) and self.rng.random() < share  # no draw at all where none are manual
        started = self.env.now

        def send(attempt: int) -> Generator[Any, Any, str]:
            self.stats.attempts += 1
            self.stats.sent[int(self.env.now)] += 1
            key = f"order-{i}" if c.same_key or not attempt else f"order-{i}-retry-{attempt}"
            return self.service.serve(self.service.request(i, merchant, amount, key, manual))

        answer = yield from self._retrying(send, FINAL, may_abandon=True)
        self.stats.answers[answer] += 1
        if answer in FINAL:
            self.stats.latencies.append(self.env.now - started)
            self.stats.finished[int(self.env.now)] += 1
        if answer == "authorized":
            self.env.process(self._settle(i, self.service.by_order[i]))
        elif answer == "succeeded" and self.rng.random() < self.config.load.refund_share:
            self.env.process(self._refund(i, self.service.by_order[i]))

    def _settle(self, i: int, charge: SimCharge) -> Generator[simpy.Event, Any, None]:
        """The merchant's move on an authorization: cancel it, let it expire, or capture it (in full or in
        part), soon or around its expiry; retried as any request, then perhaps refunded."""
        load, rng = self.config.load, self.rng
        roll = rng.random()
        if roll < load.expire_share:
            self.stats.settles["left_to_expire"] += 1
            return
        cancel = roll < load.expire_share + load.cancel_share
        late = not cancel and roll < load.expire_share + load.cancel_share + load.late_share
        if late:  # around the expiry: before it, after the PSP's, or after the janitor's
            sweep_s = self.config.recovery.authorization_sweep_s
            yield self.env.timeout(AUTHORIZATION_S + rng.uniform(-sweep_s, sweep_s))
        else:
            yield self.env.timeout(rng.expovariate(1 / load.capture_after_s))
        if cancel:
            move = "cancel"
            answer = yield from self._retrying(
                lambda _: self.service.serve(self.service.cancel(charge)), SETTLE_FINAL, may_abandon=False
            )
        else:
            amount = charge.amount
            move = "late_capture" if late else "capture"
            if not late and rng.random() < load.partial_share:
                amount, move = amount // 4 + rng.randrange(amount // 2), "partial_capture"
            answer = yield from self._retrying(
                lambda _: self.service.serve(self.service.capture(charge, amount)),
                SETTLE_FINAL,
                may_abandon=False,
            )
        self.stats.settles[f"{move}:{answer}"] += 1
        if answer == "succeeded" and rng.random() < load.refund_share:
            self.env.process(self._refund(i, charge))

    def _refund(self, i: int, charge: SimCharge) -> Generator[simpy.Event, Any, None]:
        """The customer asks for their money back, in full or half, with one key for every retry."""
        yield self.env.timeout(self.rng.expovariate(1 / self.config.load.refund_after_s))
        amount = charge.captured if self.rng.random() < 0.5 else charge.captured // 2
        answer = yield from self._retrying(
            lambda _: self.service.serve(self.refunds.request(charge, amount, f"refund-{i}")),
            REFUND_FINAL,
            may_abandon=False,
        )
        self.stats.refunds[answer] += 1

    def _retrying(
        self, send: Callable[[int], Generator[Any, Any, str]], finals: frozenset[str], may_abandon: bool
    ) -> Generator[simpy.Event, Any, str]:
        """The client's policy: wait up to its timeout, retry with exponential backoff and jitter; some
        clients give up after the first answer. The final answer, or ``gave_up``."""
        c = self.config.client
        for attempt in range(c.max_retries + 1):
            waiting = self.connections.send()
            try:
                answer = yield from send(attempt)
            except simpy.Interrupt as cut:  # Serve cancels the request where it is
                answer = "timeout" if cut.cause == HUNG_UP else "error"
            self.connections.answered(waiting)
            if answer in finals:
                return answer
            if may_abandon and attempt == 0 and self.rng.random() < c.abandon_rate:
                break
            if attempt < c.max_retries:
                self.stats.retries += 1
                backoff = min(c.backoff_cap_s, c.backoff_s * 2**attempt)
                yield self.env.timeout(backoff * (0.5 + self.rng.random()))
        return "gave_up"

    def _janitor(self) -> Generator[simpy.Event, Any, None]:
        r = self.config.recovery
        service = self.service
        while True:
            idle = not (service.unfinished or self.refunds.unfinished or service.left_open)
            if self.waiting_out and idle:
                service.idle = self.env.event()  # days with nothing to recover: sleep until there is
                yield service.idle
            yield self.env.timeout(r.interval_s)
            stale = self.env.now - r.grace_s
            for charge in list(self.service.unfinished.values()):
                if charge.touched <= stale and not charge.busy:
                    self.env.process(self.service.recover(charge))
            for refund in list(self.refunds.unfinished.values()):
                if refund.touched <= stale and not refund.busy:
                    self.env.process(self.refunds.recover(refund))
            for left in list(service.left_open.values()):
                if left.touched <= stale and not left.busy:
                    self.env.process(service.settle_left(left))

    def _expiry(self) -> Generator[simpy.Event, Any, None]:
        """The janitor's other sweep: authorizations older than ``AUTHORIZATION_DAYS`` are canceled."""
        sweep_s = self.config.recovery.authorization_sweep_s
        while True:
            yield self.env.timeout(sweep_s)
            old = self.env.now - AUTHORIZATION_S
            for charge in list(self.service.resting.values()):
                if charge.authorized_at <= old and not charge.busy:
                    self.env.process(self.service.expire(charge))

    def _replica_crashes(self) -> Generator[simpy.Event, Any, None]:
        for at in sorted(self.config.service.replica_crashes):
            yield self.env.timeout(max(0.0, at - self.env.now))
            self.service.crash_a_replica()

    def _host_crashes(self) -> Generator[simpy.Event, Any, None]:
        for at in sorted(self.config.hosts.crashes):
            yield self.env.timeout(max(0.0, at - self.env.now))
            if self.service.faults_on:
                self.service.hosts.crash()

    def _key_losses(self) -> Generator[simpy.Event, Any, None]:
        for at in sorted(self.config.service.key_losses):
            yield self.env.timeout(max(0.0, at - self.env.now))
            self.fast_keys.lose_everything()

    def _sampler(self) -> Generator[simpy.Event, Any, None]:
        while not self.waiting_out:
            second = int(self.env.now)
            self.stats.queue[second] = len(self.db.pool.waiting)
            self.stats.replica_queue[second] = sum(len(r.cpu.waiting) for r in self.service.replicas)
            hosts = self.service.hosts
            parked = sum(len(calls) for calls in hosts.parked)
            self.stats.host_queue[second] = parked + sum(len(host.in_flight()) for host in hosts.live())
            hosts.sweep()
            yield self.env.timeout(1.0)

    # -- the run -------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        # a run makes no reference cycles (test_a_run_leaves_no_garbage_cycles); collecting cost a tenth
        with cyclic_gc_paused():
            return self._run()

    def _run(self) -> RunResult:
        env = self.env
        for process in (
            self._arrivals(),
            self._janitor(),
            self._key_losses(),
            self._sampler(),
            self.connections.run(),
            self._replica_crashes(),
            self._host_crashes(),
            *((self._expiry(),) if self.config.load.manual_share else ()),
        ):
            env.process(process)
        env.run(until=self.arrivals_done)
        faults_end = env.now
        for psp in self.psps.values():
            psp.faults_on = False  # the quiet phase: everything must now finish
        self.db.faults_on = self.service.faults_on = False
        env.run(until=faults_end + self.config.quiet_s)
        if self.config.load.manual_share:
            # authorizations wait out their 7 days (the merchant's late captures with them); then every one
            # was captured, canceled or expired, and the recovery after that had time to finish
            self.waiting_out = True
            sweep_s = self.config.recovery.authorization_sweep_s
            env.run(until=faults_end + 2 * self.config.quiet_s + AUTHORIZATION_S + 2 * sweep_s)
        at_psp = {name: psp_net(psp) for name, psp in self.psps.items()}
        in_ledger = ledger_nets(self.service, self.refunds)
        real = {name: differences(at_psp[name], in_ledger.get(name, {})) for name in self.psps}
        drift, found = self._reconcile(real, at_psp, in_ledger)
        violations = check(self.service, self.refunds, real, drift, found, at_psp)
        first = self.service.payments.get(violations[0].charge or "") if violations else None
        return RunResult(
            scenario=self.scenario,
            config=self.config,
            stats=self.stats,
            violations=violations,
            first_history=[
                (at, who, t.source.value, t.event.value, t.target.value) for at, who, t in first.history
            ]
            if first
            else [],
            summary=self._summary(faults_end, found),
        )

    def _reconcile(
        self, real: dict[str, dict[str, tuple[int, int]]], at_psp: Nets, in_ledger: Nets
    ) -> tuple[dict[str, int], dict[str, int]]:
        """The nightly run in miniature, for each PSP the merchants route to: its report of what it kept,
        drifted, diffed with what the ledger says that PSP holds."""
        drift, found = Counter[str](), Counter[str]()
        for name in self.config.routing.priorities:
            self._reconcile_one(real[name], at_psp[name], in_ledger.get(name, {}), drift, found)
        return dict(drift), dict(found)

    def _reconcile_one(
        self,
        real: dict[str, tuple[int, int]],
        at_psp: dict[str, int],
        in_ledger: dict[str, int],
        drift: Counter[str],
        found: Counter[str],
    ) -> None:
        r = self.config.reconciliation
        report = dict(at_psp)
        drifting = r.missing_rate or r.amount_mismatch_rate
        for payment_id in sorted(report) if drifting else ():
            if payment_id in real:
                continue  # drift lands on rows that would otherwise match, so each difference has one cause
            roll = self.rng.random()
            if roll < r.missing_rate:
                del report[payment_id]
                drift["missing_at_psp"] += 1
            elif roll < r.missing_rate + r.amount_mismatch_rate:
                report[payment_id] += 1 + self.rng.randrange(500)
                drift["amount_mismatch"] += 1
        for n in range(r.unknown_rows):
            report[f"py_unknown_{n}"] = 100 + self.rng.randrange(99_900)
            drift["missing_in_ledger"] += 1
        for payment_id in differing(report, in_ledger):
            if payment_id in real:
                found["real_differences"] += 1
            elif payment_id not in report:
                found["missing_at_psp"] += 1
            elif payment_id not in in_ledger:
                found["missing_in_ledger"] += 1
            else:
                found["amount_mismatch"] += 1

    def _summary(self, faults_end: float, found: dict[str, int]) -> dict[str, Any]:
        latencies = sorted(self.stats.latencies)
        captures = [capture for psp in self.psps.values() for capture in psp.captures]
        states = Counter(p.state.value for p in self.service.payments.values())
        return {
            "charges": self.config.load.charges,
            "answers": dict(sorted(self.stats.answers.items())),
            "attempts": self.stats.attempts,
            "retries": self.stats.retries,
            "payments": len(self.service.payments),
            "payment_states": dict(sorted(states.items())),
            "transitions": self.service.transitions,
            "replicas": dict(sorted(self.service.replica_faults.items())),
            "hosts": self.service.hosts.summary(),
            "commits": {"pool": self.db.commits, "host_batches": self.service.hosts.batches},
            "refunds": {
                "answers": dict(sorted(self.stats.refunds.items())),
                "states": dict(sorted(Counter(r.state.value for r in self.refunds.refunds.values()).items())),
                "at_psp": sum(sum(psp.refunded.values()) for psp in self.psps.values()),
            },
            "psp": {"captures": len(captures), "refunded": sum(c.refunded for c in captures)},
            "routing": self._routing(),
            "authorizations": self._authorizations(),
            "ledger_transactions": len(self.db.ledger.transactions),
            "webhooks": dict(sorted(self.stats.webhooks.items())),
            "reconciliation": dict(sorted(found.items())),
            "latency_s": {
                "p50": _percentile(latencies, 0.50),
                "p95": _percentile(latencies, 0.95),
                "p99": _percentile(latencies, 0.99),
                "max": latencies[-1] if latencies else 0.0,
            },
            "latency_cdf": [_percentile(latencies, q / 100) for q in range(0, 101, 5)],
            "faults_end_s": faults_end,
            "sim_time_s": self.env.now,
        }

    def _authorizations(self) -> dict[str, Any]:
        """Manual captures: what the PSP did with its authorizations, and what the merchants asked."""
        auths = [a for psp in self.psps.values() for each in psp.authorizations.values() for a in each]
        statuses = Counter(a.status for a in auths)
        partial = sum(0 < a.captured < a.amount for a in auths)
        return {
            "at_psp": dict(sorted(statuses.items())),
            "partial_captures": partial,
            "expired_by_janitor": self.service.expired,
            "merchants": dict(sorted(self.stats.settles.items())),
        }

    def _routing(self) -> dict[str, Any]:
        """Each PSP's attempts and captures, the cascades, the breakers, the late successes and what became of
        the attempts payments left, and how fast payments failed over. ``success_rate``: the share of the
        charges not declined by the card's bank that the client was told succeeded (or authorized)."""
        service, answers = self.service, self.stats.answers
        succeeded = answers.get("succeeded", 0) + answers.get("authorized", 0)
        used = self.config.routing.priorities
        return {
            "priorities": list(used),
            "attempts": {name: _ends_at(service.ends, name) for name in used},
            "captures": {name: len(self.psps[name].captures) for name in used},
            "late_captures": {name: self.psps[name].late for name in used},
            "cascades": dict(sorted(service.cascades.items())),
            "left_attempts": dict(sorted(Counter(left.state for left in service.left.values()).items())),
            "breaker_opened": {
                name: sum(1 for _, psp, state in service.breaker_log if psp == name and state == "open")
                for name in used
            },
            "success_rate": succeeded / max(1, self.config.load.charges - answers.get("declined", 0)),
            "failover": self._failover(),
        }

    def _failover(self) -> dict[str, float | None]:
        """From the first PSP's first unreachable window's start: seconds until a payment was first sent to
        another PSP, and until its breaker opened; and from that opening until a new payment first went
        straight to another PSP. None where it did not happen (or there was no such window)."""
        first = self.config.routing.priorities[0]
        windows = self.config.psp_of(first).unreachable
        if not windows:
            return {"to_second_psp_s": None, "to_breaker_open_s": None, "open_to_direct_s": None}
        start = min(begin for begin, _ in windows)
        routed = self.service.routed
        moved = [_first_from(times, start) for times in routed.values()]
        log = self.service.breaker_log
        opened = next((at for at, psp, how in log if psp == first and how == "open" and at >= start), None)
        direct = [_first_from(times, opened) for (_, how), times in routed.items() if how == "direct"]
        return {
            "to_second_psp_s": _since(start, min((t for t in moved if t is not None), default=None)),
            "to_breaker_open_s": _since(start, opened),
            "open_to_direct_s": _since(opened, min((t for t in direct if t is not None), default=None)),
        }


def _ends_at(ends: Counter[tuple[str, str]], name: str) -> dict[str, int]:
    """How the attempts at one PSP ended, by end."""
    return {end: n for (psp, end), n in sorted(ends.items()) if psp == name}


def _first_from(times: list[float], start: float | None) -> float | None:
    """The first of ``times`` (in order) at or after ``start``."""
    if start is None:
        return None
    i = bisect.bisect_left(times, start)
    return times[i] if i < len(times) else None


def _since(start: float | None, at: float | None) -> float | None:
    return None if start is None or at is None else at - start


def simulate(config: SimConfig, scenario: str = "custom") -> RunResult:
    return Simulation(config, scenario).run()
