"""Refunds, simulated: ``payray.refund``'s machine driven as ``serve_app/flows/refund.py`` drives it.

The merchant's wallet is debited by its host (never below zero: the wallet checks its balance and reserves
the funds, the ledger's ``require_funds`` checks again; a refund the balance does not cover leaves nothing
behind) before the PSP is asked, with a key derived from the refund id; a PSP refusal is given back with a
reversing posting; an unknown outcome is retried with the same key, by the client or by recovery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

from ledger.postings import refund_posting, refund_reversal_posting
from payray.errors import IllegalTransition
from payray.fees import fee_for, refund_terms
from payray.money import Money
from payray.refund import (
    PSP_EVENTS,
    TERMINAL_STATES,
    RefundCommand,
    RefundEvent,
    RefundState,
    RefundTransition,
    psp_refund_key,
    resume,
    step,
)
from sim.hosts import INSUFFICIENT, host_posting
from sim.service import Crash, MachineRefused, SimCharge, SimService, driving
from sim.world import FEE_BPS, Unavailable

RefundAnswer = Literal["succeeded", "failed", "pending", "refused", "in_flight", "error"]
R, RE, RC = RefundState, RefundEvent, RefundCommand


@dataclass(slots=True)
class SimRefund:
    id: str
    charge: SimCharge
    amount: int
    fee_returned: int
    key: str
    state: RefundState = R.PENDING
    touched: float = 0.0
    busy: bool = False
    history: list[tuple[float, str, RefundTransition]] = field(default_factory=list)


class SimRefunds:
    def __init__(self, service: SimService) -> None:
        self.s = service
        self.refunds: dict[str, SimRefund] = {}
        self.unfinished: dict[str, SimRefund] = {}
        self.keys: dict[tuple[str, str], str] = {}
        #: refunded or reserved, per charge: concurrent refunds never add up to more than the charge
        self.reserved: dict[str, int] = {}
        #: refunds the balance did not cover, by id: their charge's id
        self.discarded: dict[str, str] = {}
        self.transitions = 0
        self.created = 0

    def request(self, charge: SimCharge, amount: int, key: str) -> Generator[Any, Any, RefundAnswer]:
        """``POST /v1/refunds`` with an Idempotency-Key."""
        s = self.s
        try:
            yield s.db.commit()  # the key and the refund, its amount reserved on the charge; or the old one
            known = self.keys.get((charge.id, key))
            if known is not None:
                refund = self.refunds[known]
            else:
                reserved = self.reserved.get(charge.id, 0)
                if reserved + amount > charge.captured:
                    return "refused"
                refund = self._create(charge, amount, reserved, key)
                self.keys[(charge.id, key)] = refund.id
            if refund.busy:
                return "in_flight"
            if refund.state not in TERMINAL_STATES:
                with driving(refund):
                    yield from self._drive(refund, "api")
        except (Unavailable, Crash):
            return "error"
        if refund.id not in self.refunds:
            return "refused"  # the balance did not cover it: discarded, nothing left behind
        if refund.state is R.SUCCEEDED:
            return "succeeded"
        return "failed" if refund.state is R.FAILED else "pending"

    def _create(self, charge: SimCharge, amount: int, reserved: int, key: str) -> SimRefund:
        charged = Money(charge.captured, "usd")
        fee = refund_terms(charged, fee_for(charged, FEE_BPS), reserved, amount).fee_returned
        self.created += 1
        refund = SimRefund(f"re_{self.created:08d}", charge, amount, fee.amount, key, touched=self.s.env.now)
        self.refunds[refund.id] = refund
        self.unfinished[refund.id] = refund
        self.reserved[charge.id] = reserved + amount
        self.s.wake()
        return refund

    def _drive(
        self, refund: SimRefund, who: str, event: RefundEvent | None = None
    ) -> Generator[Any, Any, None]:
        """``RefundFlow``, as one loop like the charge driver's: from ``event``, or else from the persisted
        state, persist each transition (one commit) and run its command, whose outcome is the next event."""
        s, charge = self.s, refund.charge
        commands: tuple[RefundCommand, ...] = ()
        if event is None:
            resumption = resume(refund.state)
            event, commands = resumption.event, resumption.commands
        while True:
            if event is not None:
                try:
                    transition = step(refund.state, event)
                except IllegalTransition as exc:
                    raise MachineRefused(f"refund {refund.id}: {exc}") from exc
                yield s.db.commit()  # persisted before its commands run
                refund.history.append((s.env.now, who, transition))
                refund.state, refund.touched = transition.target, s.env.now
                self.transitions += 1
                if refund.state in TERMINAL_STATES:
                    self.unfinished.pop(refund.id, None)
                if refund.state is R.FAILED:  # given back: the amount may be refunded again
                    self.reserved[charge.id] -= refund.amount
                commands, event = transition.commands, None
            if not commands:
                return
            command = commands[0]
            amount, fee = Money(refund.amount, "usd"), Money(refund.fee_returned, "usd")
            if command is RC.DEBIT_WALLET:
                # the host answers a debit it already posted (a retry after a cancelled request) with that
                # posting, whatever the balance now; only a new one must be covered
                debit = refund_posting(refund.id, charge.merchant, amount, fee)
                postings = [host_posting(debit, need=(amount - fee).amount)]
                yield s.post(postings)
                s.answered(postings)
                if postings[0].result is INSUFFICIENT:
                    self._discard(refund)
                    return
                event = RE.FUNDS_HELD
            elif command is RC.REFUND_AT_PSP:
                psp = s.psps[charge.psp]  # the PSP of its charge's winning attempt
                outcome = yield from psp.refund_part(charge.id, refund.amount, psp_refund_key(refund.id))
                event = PSP_EVENTS[outcome]
            elif command is RC.POST_REVERSAL:
                reversal = refund_reversal_posting(refund.id, charge.merchant, amount, fee)
                postings = [host_posting(reversal)]
                yield s.post(postings)
                s.answered(postings)
                event = RE.REVERSAL_POSTED
            elif command is RC.BOOK_REFUND:  # made at the PSP already: booked whatever the balance
                postings = [host_posting(refund_posting(refund.id, charge.merchant, amount, fee))]
                yield s.post(postings)
                s.answered(postings)
                event = RE.REFUND_BOOKED
            else:
                return  # RESPOND: the answer is the state

    def _discard(self, refund: SimRefund) -> None:
        """The balance did not cover it: no refund, no key, no reservation left behind."""
        del self.refunds[refund.id]
        self.discarded[refund.id] = refund.charge.id
        self.unfinished.pop(refund.id, None)
        self.keys.pop((refund.charge.id, refund.key), None)
        self.reserved[refund.charge.id] -= refund.amount

    def recover(self, refund: SimRefund) -> Generator[Any, Any, None]:
        """Recovery: a refund nobody drives any more resumes from its state (PSP calls reuse their key)."""
        if refund.busy or refund.state in TERMINAL_STATES or refund.id not in self.refunds:
            return
        with driving(refund), contextlib.suppress(Unavailable, Crash):  # the next sweep tries again
            yield from self._drive(refund, "janitor")

    def webhook(self, key: str, psp: str = "stripe") -> Generator[Any, Any, bool]:
        """``charge.refunded`` from ``psp``: settles one of our refunds whose outcome we did not know, or
        books one made at that PSP without us. False (a 409) while its own request is live, so the PSP
        delivers it again."""
        if key in self.s.psps[psp].external:
            return (yield from self._learn(key, psp))
        refund = self.refunds.get(key.removeprefix("payray-refund-"))
        if refund is None or refund.state is not R.PSP_UNKNOWN:
            return refund is None or not refund.busy
        if refund.busy:
            return False
        try:
            with driving(refund):
                yield from self._drive(refund, "webhook", PSP_EVENTS["refunded"])
        except (Unavailable, Crash):
            return False
        return True

    def _learn(self, key: str, psp: str) -> Generator[Any, Any, bool]:
        """A refund the PSP made without us: the money is gone, so it is booked whatever the balance."""
        known = self.keys.get(("psp", key))
        if known is not None:
            refund = self.refunds[known]
            if refund.state in TERMINAL_STATES:
                return True
            if refund.busy:
                return False
        else:
            payment_id, amount = self.s.psps[psp].external[key]
            charge = self.s.payments[payment_id]
            reserved = self.reserved.get(payment_id, 0)
            refund = self._create(charge, amount, min(reserved, charge.captured - amount), key)
            self.reserved[payment_id] = reserved + amount
            refund.state = R.BOOKING
            self.keys[("psp", key)] = refund.id
        try:
            with driving(refund):
                yield self.s.db.commit()
                yield from self._drive(refund, "webhook")
        except (Unavailable, Crash):
            return False
        return refund.state in TERMINAL_STATES
