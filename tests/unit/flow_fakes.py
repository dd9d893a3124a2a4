"""In-memory stand-ins for what the charge and refund flows talk to: the store, the PSP and the wallets.

The wallets are a fake unit of work in cosmicpython's manner: a posting and the statement it completes
(``Posting.completes``: a charge's booked transitions) are committed together or not at all, as the wallet
host's database transaction does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from actors.wallet import InsufficientFunds
from ledger.postings import Posting, Statement
from ledger.store import PostingResult
from payray.charge import psp_idempotency_key
from payray.fees import fee_for
from payray.money import Money
from payray.refund import psp_refund_key
from psp.port import PspCapture, PspChargeResult, PspRefund, PspRefundResult, SettlementReport
from serve_app.stores.charges import Charge, ChargeWrite, EndedAttempt
from serve_app.stores.refunds import Refund, RefundWrite

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def new_charge(payment_id: str = "ch_1", amount: int = 1000, state: str = "psp_pending") -> Charge:
    return Charge(
        id=payment_id,
        merchant_id="m_1",
        amount=Money(amount, "usd"),
        fee=fee_for(Money(amount, "usd"), 290),
        payment_method="pm_card_visa",
        state=state,
        idempotency_key=f"key-{payment_id}",
        psp_idempotency_key=psp_idempotency_key(payment_id),
        created_at=NOW,
    )


def new_refund(refund_id: str = "re_1", amount: int = 400, state: str = "pending") -> Refund:
    return Refund(
        id=refund_id,
        merchant_id="m_1",
        payment_id="ch_1",
        amount=Money(amount, "usd"),
        fee_returned=Money(12, "usd"),
        state=state,
        psp_idempotency_key=psp_refund_key(refund_id),
        created_at=NOW,
        idempotency_key=f"key-{refund_id}",
    )


def _changed(fields: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The columns a write sets: the named fields that carry a value (the SQL's ``COALESCE``)."""
    return {name: fields[name] for name in names if fields.get(name) is not None}


@dataclass
class Written:
    """One write of a store: the object's id, its transitions, and the answer and event stored with them."""

    object_id: str
    steps: list[tuple[str, str, str]]
    detail: dict[str, Any]
    response: tuple[int, bytes] | None
    topic: str | None


@dataclass
class FakeCharges:
    """``ChargeStore`` over a dict, guarded as ``APPLY_TRANSITIONS`` is by the state a write starts from."""

    rows: dict[str, Charge] = field(default_factory=dict)
    writes: list[Written] = field(default_factory=list)
    responses: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    #: the attempts that ended as their payment failed over (``payment_attempts``)
    ended: list[EndedAttempt] = field(default_factory=list)

    def add(self, charge: Charge) -> Charge:
        self.rows[charge.id] = charge
        return charge

    def events(self, payment_id: str) -> list[str]:
        return [event for w in self.writes if w.object_id == payment_id for _, event, _ in w.steps]

    async def load(self, payment_id: str) -> Charge | None:
        return self.rows.get(payment_id)

    async def apply(self, write: ChargeWrite, conn: Any = None) -> Charge | None:
        charge, chain = write.charge, write.chain
        current = self.rows[charge.id]
        if current.state != chain[0].source.value:
            return None
        names = ("psp_reference", "failure_code", "failure_message", "ledger_transaction_id")
        moved = current.evolve(state=chain[-1].target.value, **_changed(write.fields, names))
        if write.ended is not None:  # the next attempt starts afresh, as the SQL's does
            self.ended.append(write.ended)
            fresh = {"psp_reference": None, "failure_code": None, "failure_message": None}
            next_attempt = {
                "psp": write.fields["psp"],
                "psp_idempotency_key": write.fields["psp_idempotency_key"],
            }
            moved = moved.evolve(**fresh, **next_attempt)
        self.rows[charge.id] = moved
        steps = [(t.source.value, t.event.value, t.target.value) for t in chain]
        topic = write.outbox[0] if write.outbox else None
        self.writes.append(Written(charge.id, steps, write.detail, write.response, topic))
        if write.response is not None:
            self.responses[charge.id] = write.response
        return moved

    def booking(self, write: ChargeWrite) -> Statement:
        return Statement("book", {"write": write})

    async def complete(self, statement: Statement, transaction_id: str) -> bool:
        """Run a booking statement in the posting's commit: False when its guard found the charge moved."""
        write: ChargeWrite = statement.params["write"]
        fields = {**write.fields, "ledger_transaction_id": transaction_id}
        return await self.apply(dataclasses.replace(write, fields=fields)) is not None

    async def store_response(self, payment_id: str, status: int, body: bytes) -> None:
        self.responses[payment_id] = (status, body)


@dataclass
class FakeRefunds:
    """``RefundStore`` over a dict, guarded by the state a write starts from."""

    rows: dict[str, Refund] = field(default_factory=dict)
    writes: list[Written] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    charge_references: dict[str, str] = field(default_factory=lambda: {"ch_1": "pi_1"})
    charge_psps: dict[str, str] = field(default_factory=dict)  # the charges not made at Stripe

    def add(self, refund: Refund) -> Refund:
        self.rows[refund.id] = refund
        return refund

    def events(self, refund_id: str) -> list[str]:
        return [event for w in self.writes if w.object_id == refund_id for _, event, _ in w.steps]

    async def load(self, refund_id: str) -> Refund | None:
        return self.rows.get(refund_id)

    async def apply(self, write: RefundWrite, conn: Any = None) -> Refund | None:
        refund, transition = write.refund, write.transition
        current = self.rows[refund.id]
        if current.state != transition.source.value:
            return None
        names = ("psp_reference", "failure_reason", "ledger_transaction_id")
        moved = current.evolve(state=transition.target.value, **_changed(write.fields, names))
        self.rows[refund.id] = moved
        step = (transition.source.value, transition.event.value, transition.target.value)
        topic = write.outbox[0] if write.outbox else None
        self.writes.append(Written(refund.id, [step], write.detail, write.response, topic))
        return moved

    async def charge_at_psp(self, payment_id: str) -> tuple[str, str]:
        return self.charge_psps.get(payment_id, "stripe"), self.charge_references[payment_id]

    async def charge(self, charge_id: str) -> Any:
        return None  # no charges here: no charge.refunded event

    async def discard(self, refund_id: str) -> None:
        self.rows.pop(refund_id, None)
        self.discarded.append(refund_id)


@dataclass
class FakeWallets:
    """The merchants' wallets as one fake unit of work: each posting is committed (idempotently, by kind and
    reference) with the statement it completes, or refused with nothing of either written."""

    payments: FakeCharges | None = None
    balance: int = 1_000_000
    #: how many of the next postings the ledger refuses
    refuse: int = 0
    committed: dict[tuple[str, str], str] = field(default_factory=dict)

    def kinds(self) -> list[tuple[str, str]]:
        return list(self.committed)

    async def post(self, merchant_id: str, posting: Posting) -> PostingResult:
        assert posting.merchant_id == merchant_id
        if self.refuse:
            self.refuse -= 1
            return PostingResult(posting.external_ref, None, False, "posting refused", {})
        key = (posting.kind, posting.external_ref)
        created = key not in self.committed
        transaction_id = self.committed.setdefault(key, f"tx_{len(self.committed) + 1}")
        completed = None
        if posting.completes is not None:
            assert self.payments is not None, "a posting that completes a statement needs the store"
            completed = await self.payments.complete(posting.completes, transaction_id)
        return PostingResult(posting.external_ref, transaction_id, created, None, {}, completed=completed)

    async def debit(self, merchant_id: str, posting: Posting, amount: Money) -> PostingResult:
        if amount.amount > self.balance:
            raise InsufficientFunds("the balance does not cover it")
        self.balance -= amount.amount
        return await self.post(merchant_id, posting)


@dataclass
class FakePsp:
    """A ``PaymentServiceProvider`` that answers as scripted and remembers what it was asked."""

    #: the answers to the next captures, in order; then ``captured``. Besides the port's statuses:
    #: ``not_sent`` (the connection failed first), ``refused`` (a 4xx) and ``declined:<code>``.
    capture_answers: list[str] = field(default_factory=list)
    #: the answers to the next refunds, in order; then ``refunded``
    refund_answers: list[str] = field(default_factory=list)
    #: what a search by charge id finds
    found: dict[str, PspChargeResult] = field(default_factory=dict)
    capture_keys: list[str] = field(default_factory=list)
    refund_keys: list[str] = field(default_factory=list)
    #: how its references start (``pi`` as Stripe's PaymentIntents)
    prefix: str = "pi"
    currencies: frozenset[str] = frozenset({"usd", "eur", "jpy"})
    refund_references: list[str] = field(default_factory=list)

    async def capture(
        self,
        *,
        payment_id: str,
        amount: int,
        currency: str,
        payment_method: str,
        idempotency_key: str,
        metadata: dict[str, str],
        description: str | None = None,
        customer: str | None = None,
        capture_method: str = "automatic",
    ) -> PspChargeResult:
        self.capture_keys.append(idempotency_key)
        status = self.capture_answers.pop(0) if self.capture_answers else "captured"
        reference = f"{self.prefix}_{payment_id}"
        if status == "not_sent":
            return PspChargeResult("unknown", refusal="not_sent", detail="ConnectionRefusedError")
        if status == "refused":
            return PspChargeResult("declined", failure_code="invalid_request", refusal="refused")
        if status.startswith("declined"):
            code = status.partition(":")[2] or "card_declined"
            return PspChargeResult("declined", reference, failure_code=code)
        return PspChargeResult(status, reference if status in ("captured", "authorized") else None)

    async def lookup(self, *, payment_id: str) -> PspChargeResult | None:
        return self.found.get(payment_id)

    def takes(self, currency: str) -> bool:
        return currency.lower() in self.currencies

    async def aclose(self) -> None:
        return None

    async def refund(
        self,
        *,
        payment_id: str,
        psp_reference: str,
        amount: int,
        idempotency_key: str,
        refund_id: str | None = None,
    ) -> PspRefundResult:
        self.refund_keys.append(idempotency_key)
        self.refund_references.append(psp_reference)
        status = self.refund_answers.pop(0) if self.refund_answers else "refunded"
        reference = f"pre_{len(self.refund_keys)}" if status == "refunded" else None
        return PspRefundResult(status, reference, "refused by the bank" if status == "failed" else None)

    async def list_refunds(self) -> AsyncIterator[PspRefund]:
        return
        yield

    async def refunds_for(self, *, psp_reference: str) -> list[PspRefund]:
        return []

    async def list_captures(self) -> AsyncIterator[PspCapture]:
        return
        yield

    async def ping(self) -> bool:
        return True

    def settlement_report(self, day: date, columns: Sequence[str]) -> SettlementReport:
        raise NotImplementedError("no settlement reports in these tests")
