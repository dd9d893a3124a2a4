"""The service, simulated: the idempotency layers, and a SimPy driver of ``payray.charge``'s state machine.

The driver does what ``serve_app/charge_flow.py`` does, against simulated components: each transition comes
from ``payray.charge.step`` and is persisted (a database commit) before its commands run; the commands call
the simulated PSP and ledger; recovery looks a payment up at the PSP rather than capturing again. So what the
simulator finds about the machine is true of the production machine.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import simpy

from payray.charge import (
    RESUME,
    TERMINAL_STATES,
    ChargeEvent,
    ChargeState,
    Command,
    psp_idempotency_key,
    step,
)
from payray.errors import IllegalTransition
from sim.config import SimConfig
from sim.world import FastKeys, SimDatabase, SimPsp, Unavailable, capture_of, compensation_of

Answer = Literal["succeeded", "declined", "failed", "pending", "in_flight", "error"]
E, S = ChargeEvent, ChargeState


class Crash(Exception):
    """The API replica died in the middle of a request."""


class MachineRefused(Exception):
    """The driver asked ``payray.charge`` for a transition it does not have: a bug in the driver or the
    machine, never a simulated fault."""


@dataclass
class SimPayment:
    id: str
    order_id: int
    merchant: str
    key: str
    amount: int
    state: ChargeState = S.CREATED
    touched: float = 0.0
    busy: bool = False
    #: (time, who, from, event, to): the payment's whole story, printed for the first violation
    history: list[tuple[float, str, ChargeState, ChargeEvent, ChargeState]] = field(default_factory=list)


PSP_EVENTS = {"captured": E.PSP_CAPTURED, "declined": E.PSP_DECLINED, "unknown": E.PSP_UNKNOWN}
ANSWERS: dict[ChargeState, Answer] = {S.SUCCEEDED: "succeeded", S.DECLINED: "declined", S.FAILED: "failed"}


class SimService:
    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        config: SimConfig,
        psp: SimPsp,
        db: SimDatabase,
        fast_keys: FastKeys,
    ) -> None:
        self.env, self.rng, self.config = env, rng, config
        self.psp, self.db, self.fast_keys = psp, db, fast_keys
        self.payments: dict[str, SimPayment] = {}
        self.unfinished: dict[str, SimPayment] = {}
        self.faults_on = True
        self.transitions = 0
        self.created = 0
        #: each order's latest payment (a swap may make several)
        self.by_order: dict[int, SimPayment] = {}

    # -- the API -----------------------------------------------------------------------------------------

    def request(self, order_id: int, merchant: str, amount: int, key: str) -> Generator[Any, Any, Answer]:
        """``POST /v1/charges`` with an Idempotency-Key: replayed, refused in flight, or a new payment."""
        yield self.env.timeout(self.config.service.work_s)
        try:
            payment = yield from self._idempotent(order_id, merchant, amount, key)
            if payment.busy:
                return "in_flight"
            if payment.state not in TERMINAL_STATES:
                payment.busy = True
                try:
                    yield from self._resume(payment, "api")
                finally:
                    payment.busy = False
        except (Unavailable, Crash):
            return "error"
        return ANSWERS.get(payment.state, "pending")

    def _idempotent(
        self, order_id: int, merchant: str, amount: int, key: str
    ) -> Generator[Any, Any, SimPayment]:
        mode = self.config.design.idempotency
        scoped = (order_id % self.config.load.merchants, key)
        if mode != "off":
            known = self.fast_keys.keys.get(scoped)
            if known is not None:
                return self.payments[known]
        # Redis does not know the key: insert it with the payment in one transaction, or find it there
        yield self.db.commit()
        if mode == "full" and scoped in self.db.keys:
            return self.payments[self.db.keys[scoped]]
        self.created += 1
        payment = SimPayment(f"py_{self.created:08d}", order_id, merchant, key, amount, touched=self.env.now)
        self.payments[payment.id] = payment
        self.by_order[order_id] = payment
        self.unfinished[payment.id] = payment
        if mode != "off":
            self.db.keys[scoped] = payment.id
            self.fast_keys.keys[scoped] = payment.id
        return payment

    # -- the driver ----------------------------------------------------------------------------------------

    def _resume(self, payment: SimPayment, who: str) -> Generator[Any, Any, None]:
        """Finish a flow from its persisted state, as ``ChargeFlow.resume`` does."""
        if payment.state is S.CREATED:
            yield from self._advance(payment, E.SUBMIT, who)
        elif payment.state is S.UNKNOWN:
            yield from self._advance(payment, E.PSP_RETRY, who)
        elif payment.state in RESUME:
            for command in RESUME[payment.state]:
                yield from self._run(payment, command, who)

    def _advance(self, payment: SimPayment, event: ChargeEvent, who: str) -> Generator[Any, Any, None]:
        try:
            transition = step(payment.state, event)
        except IllegalTransition as exc:
            raise MachineRefused(f"payment {payment.id}: {exc}") from exc
        yield self.db.commit()  # persisted before its commands run
        payment.history.append((self.env.now, who, payment.state, event, transition.target))
        payment.state, payment.touched = transition.target, self.env.now
        self.transitions += 1
        if payment.state in TERMINAL_STATES:
            self.unfinished.pop(payment.id, None)
        for command in transition.commands:
            yield from self._run(payment, command, who)

    def _run(self, payment: SimPayment, command: Command, who: str) -> Generator[Any, Any, None]:
        if command is Command.CALL_PSP:
            outcome, _calls = yield from self.psp.capture(
                payment.id, payment.order_id, payment.amount, psp_idempotency_key(payment.id)
            )
            crash = self.config.service.crash_after_capture_rate
            if self.faults_on and outcome == "captured" and self.rng.random() < crash:
                raise Crash("the replica died after the PSP captured")
            event = PSP_EVENTS[outcome]
            yield from self._advance(payment, event, who)
        elif command is Command.POST_LEDGER:
            if self.faults_on and self.rng.random() < self.config.service.ledger_failure_rate:
                yield from self._advance(payment, E.LEDGER_FAILED, who)
                return
            yield self.db.commit()
            self.db.ledger.post(capture_of(payment.id, payment.merchant, payment.amount))
            yield from self._advance(payment, E.LEDGER_POSTED, who)
        elif command is Command.RESPOND_SUCCEEDED:
            yield from self._advance(payment, E.RESPONDED, who)
        elif command is Command.REFUND_AT_PSP:
            if not self.config.design.compensation:  # a design that takes "failed" to mean "nothing moved"
                yield from self._advance(payment, E.PSP_REFUNDED, who)
                return
            refunded = yield from self.psp.refund(payment.id)
            if refunded:
                yield from self._advance(payment, E.PSP_REFUNDED, who)
            # else: stay refund_pending; recovery refunds again with the same key
        elif command is Command.POST_COMPENSATION:
            yield self.db.commit()
            if self.config.design.compensation:  # the capture and its reversal: the PSP moved money twice
                self.db.ledger.post(capture_of(payment.id, payment.merchant, payment.amount))
                self.db.ledger.post(compensation_of(payment.id, payment.merchant, payment.amount))
            yield from self._advance(payment, E.COMPENSATION_POSTED, who)
        # RESPOND_DECLINED, RESPOND_PENDING, RESPOND_FAILED: the answer is the state

    # -- recovery and webhooks ----------------------------------------------------------------------------

    def recover(self, payment: SimPayment) -> Generator[Any, Any, None]:
        """``ChargeFlow.recover``: never capture again; ask the PSP what happened, then go on from there."""
        if payment.busy or payment.state in TERMINAL_STATES:
            return
        payment.busy = True
        try:
            with contextlib.suppress(Unavailable, Crash):  # the next sweep tries again
                yield from self._recover(payment)
        finally:
            payment.busy = False

    def _recover(self, payment: SimPayment) -> Generator[Any, Any, None]:
        if payment.state not in (S.PSP_PENDING, S.UNKNOWN):
            yield from self._resume(payment, "janitor")
            return
        found = yield from self.psp.lookup(payment.id)
        if found == "captured":
            yield from self._advance(payment, E.PSP_CAPTURED, "janitor")
        elif found == "declined":
            yield from self._advance(payment, E.PSP_DECLINED, "janitor")
        elif found == "not_found":
            if payment.state is S.PSP_PENDING:
                yield from self._advance(payment, E.PSP_UNKNOWN, "janitor")
            yield from self._advance(payment, E.PSP_NOT_FOUND, "janitor")

    def webhook(self, payment_id: str, outcome: str) -> Generator[Any, Any, bool]:
        """A ``charge.succeeded`` or ``charge.failed`` event: applied to a payment still waiting to hear from
        the PSP. False (a 409) while its own request is live, so the PSP delivers it again."""
        payment = self.payments.get(payment_id)
        if payment is None or payment.state not in (S.PSP_PENDING, S.UNKNOWN):
            return True  # not ours, or already known: acknowledged, nothing to do
        if payment.busy:
            return False
        payment.busy = True
        try:
            yield from self._advance(payment, PSP_EVENTS[outcome], "webhook")
        except (Unavailable, Crash):
            return False
        finally:
            payment.busy = False
        return True
