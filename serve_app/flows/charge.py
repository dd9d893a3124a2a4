"""The asyncio driver of the charge state machine: runs its commands against the PSP, ledger and wallet.

The machine (``payray.charge``) decides; this module only acts. Each event is persisted (with the state
it leads to) before the commands it triggers run, so a crash at any point leaves a state that
``resume`` can finish from. Every command is idempotent: the PSP call reuses the charge's PSP
idempotency key, and the ledger posting is keyed on the charge id. A capture is booked as the machine's
``booking`` says: its posting and the transitions it completes (with the stored answer) commit in one
transaction of the merchant's wallet host, so a charge costs its insert and a share of one batch commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger.postings import Statement, capture_posting, fee_for, refund_posting
from payray.charge import (
    AUTOMATIC,
    AWAITING_PSP,
    PSP_EVENTS,
    ChargeEvent,
    ChargeState,
    Command,
    Transition,
    after_lookup,
    allowed_events,
    booking,
    booking_refused,
    decides_answer,
    psp_idempotency_key,
    resume,
    step,
    with_automatic,
)
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.money import Money
from psp.port import PaymentServiceProvider
from serve_app.flows.idempotent import Answer, IdempotentRequests, Operation
from serve_app.flows.recent import RecentOutcomes
from serve_app.stores import charges as db
from serve_app.stores.charges import Charge, ChargeWrite, PostgresCharges
from serve_app.wallets import WalletDirectory
from serve_app.wire.render import charge_object, decline_object, dumps
from serve_app.wire.schemas import ChargeCreate

log = logging.getLogger("payray.charge")
LEDGER_ATTEMPTS = 3


@dataclass(frozen=True)
class Persisted:
    """A transition written to Postgres (``stored`` is None if the charge had moved on meanwhile) and what
    is left to do about it once its transaction commits."""

    charge: Charge
    stored: Charge | None
    chain: list[Transition]
    commands: list[Command]
    response: Reply | None


@dataclass(frozen=True)
class Reply:
    """What the API answers, and stores under the idempotency key for replay."""

    status: int
    body: bytes
    charge: Charge


@dataclass(frozen=True)
class Persist:
    """Next: persist ``chain`` from the charge's state, then do what its last transition asks for."""

    charge: Charge
    chain: list[Transition]
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Book:
    """Next: post the capture with the transitions it completes (``booking``), in one transaction."""

    charge: Charge
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Next: run the command a persisted transition asked for."""

    charge: Charge
    command: Command


#: What the driver does next; a ``Reply`` ends the drive.
Next = Persist | Book | Run | Reply


def reply_for(charge: Charge) -> Reply:
    """The response a charge in its current state deserves."""
    state = ChargeState(charge.state)
    if state is ChargeState.SUCCEEDED:
        return Reply(200, dumps(charge_object(charge)), charge)
    if state in (ChargeState.DECLINED, ChargeState.FAILED):
        return Reply(402, dumps(decline_object(charge)), charge)
    return Reply(202, dumps(charge_object(charge)), charge)


def advance(
    charge: Charge,
    event: ChargeEvent,
    fields: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
) -> Persist:
    """Next: persist ``event`` in the charge's state."""
    return Persist(charge, [step(charge.state, event)], fields or {}, detail or {})


def heard(charge: Charge, event: ChargeEvent, fields: dict[str, Any], detail: dict[str, Any]) -> Next:
    """Next, on the PSP's word: a capture is booked with its posting; any other answer is persisted."""
    if event is ChargeEvent.PSP_CAPTURED:
        return Book(charge, fields, detail)
    return advance(charge, event, fields, detail)


class ChargeStore(Protocol):
    """The charges the charge flow reads and writes: Postgres in the service (``PostgresCharges``), a dict in
    unit tests."""

    async def load(self, charge_id: str) -> Charge | None: ...

    async def apply(self, write: ChargeWrite, conn: AsyncConnection[Any] | None = None) -> Charge | None:
        """Persist ``write`` (on ``conn``, inside its transaction, when given); None if the charge had moved
        on meanwhile."""
        ...

    def booking(self, write: ChargeWrite) -> Statement:
        """The same write, as the statement a capture's ledger transaction runs (``Posting.completes``)."""
        ...

    async def store_response(self, charge_id: str, status: int, body: bytes) -> None: ...


class ChargeFlow:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        psp: PaymentServiceProvider,
        wallets: WalletDirectory,
        on_transition: Callable[[Transition], None] | None = None,
        *,
        store: ChargeStore | None = None,
    ) -> None:
        self._store = store if store is not None else PostgresCharges(pool)
        self._psp = psp
        self._wallets = wallets
        self._on_transition = on_transition or (lambda t: None)
        #: payments this driver saw past the PSP, and those it is driving now (for the webhooks)
        self.outcomes = RecentOutcomes()
        self._handlers: dict[Command, Callable[[Charge], Awaitable[Next]]] = {
            Command.CALL_PSP: self._call_psp,
            Command.POST_LEDGER: self._post_ledger,
            Command.REFUND_AT_PSP: self._refund_at_psp,
            Command.POST_COMPENSATION: self._post_compensation,
        }

    async def start(self, charge: Charge) -> Reply:
        """Drive a freshly inserted charge (already ``psp_pending``) to its answer."""
        async with self.outcomes.driving(charge.id):
            reply = await self._drive(Run(charge, Command.CALL_PSP))
        self.outcomes.saw(reply.charge.id, reply.charge.state)
        return reply

    async def resume(self, charge: Charge) -> Reply:
        """Finish an interrupted or pending flow from its persisted state."""
        resumption = resume(charge.state)
        if resumption.event is not None:
            return await self._drive(advance(charge, resumption.event))
        if resumption.commands:
            (command,) = resumption.commands
            return await self._drive(Run(charge, command))
        reply = reply_for(charge)
        await self._store.store_response(charge.id, reply.status, reply.body)
        return reply

    async def recover(self, charge: Charge) -> Reply:
        """Finish a charge nobody drives any more (recovery). One that never heard the PSP's answer asks the
        PSP, by the charge id in the intent's metadata, what happened, rather than capturing again: found
        captured or declined, it goes on from there; not found, it failed. Every other state resumes."""
        if charge.state not in AWAITING_PSP:
            return await self.resume(charge)
        found = await self._psp.lookup(payment_id=charge.id)
        fields: dict[str, Any] = {}
        detail = {"source": "recovery"}
        if found is not None:
            fields["psp_reference"] = found.psp_reference
        if found is not None and found.status == "declined":
            fields.update(failure_code=found.failure_code, failure_message=found.failure_message)
            detail = {}
        reply = reply_for(charge)  # found but undecided: the next sweep asks again
        for event in after_lookup(charge.state, found.status if found is not None else None):
            reply = await self._drive(heard(reply.charge, event, fields, detail))
        return reply

    async def apply_psp_outcome(
        self, conn: AsyncConnection[Any], charge: Charge, outcome: str, fields: dict[str, Any]
    ) -> Persisted | None:
        """Persist, on ``conn`` and inside its transaction, an outcome the PSP reported out of band (a
        webhook): ``captured`` or ``declined``. ``None`` when the charge is no longer waiting for it; else
        run ``finish`` on the result once the transaction has committed."""
        event = PSP_EVENTS[outcome]
        if event not in allowed_events(charge.state):
            return None
        chain = [step(charge.state, event)]
        return await self._persist(charge, chain, fields, {"source": "webhook"}, conn=conn)

    async def finish(self, persisted: Persisted) -> Reply:
        """After a transition committed: run what it asked for, or answer with what it decided."""
        return await self._drive(await self._after_commit(persisted))

    async def _drive(self, todo: Next) -> Reply:
        """Drive the machine: persist a chain, book a capture or run a command, each of which says what comes
        next, until one has the answer."""
        while not isinstance(todo, Reply):
            if isinstance(todo, Persist):
                persisted = await self._persist(todo.charge, todo.chain, todo.fields, todo.detail)
                todo = await self._after_commit(persisted)
            elif isinstance(todo, Book):
                todo = await self._book(todo.charge, todo.fields, todo.detail)
            elif todo.command in AUTOMATIC:
                todo = advance(todo.charge, AUTOMATIC[todo.command])
            else:
                todo = await self._handlers[todo.command](todo.charge)
        return todo

    async def _persist(
        self,
        charge: Charge,
        chain: list[Transition],
        fields: dict[str, Any],
        detail: dict[str, Any],
        conn: AsyncConnection[Any] | None = None,
    ) -> Persisted:
        """Persist ``chain`` (and the automatic steps after it); if it ends in an answer, store that answer
        in the same statement."""
        chain = list(with_automatic(chain))
        commands = list(chain[-1].commands)
        after = charge.evolve(
            state=chain[-1].target.value, **{k: v for k, v in fields.items() if v is not None}
        )
        # A transition that decides the answer stores it (and announces it) in the same statement.
        response: Reply | None = None
        outbox = None
        if decides_answer(chain[-1]):
            response = reply_for(after)
            rendered = charge_object(after)
            outbox = (f"charge.{rendered['status']}", rendered)
            commands = []
        answer = (response.status, response.body) if response else None
        stored = await self._store.apply(ChargeWrite(charge, chain, fields, detail, answer, outbox), conn)
        return Persisted(charge, stored, chain, commands, response)

    async def _after_commit(self, persisted: Persisted) -> Next:
        """What follows a committed transition: the command it asked for, or the answer it decided."""
        if persisted.stored is None:
            # Another driver moved this charge first; answer with what it has now.
            current = await self._store.load(persisted.charge.id)
            assert current is not None
            return reply_for(current)
        stored = persisted.stored
        self._announce(stored, persisted.chain)
        if persisted.response is not None:
            return Reply(persisted.response.status, persisted.response.body, stored)
        (command,) = persisted.commands  # the machine asks for one command at a time
        return Run(stored, command)

    async def _call_psp(self, charge: Charge) -> Next:
        result = await self._psp.capture(
            payment_id=charge.id,
            amount=charge.amount.amount,
            currency=charge.currency,
            payment_method=charge.payment_method,
            idempotency_key=charge.psp_idempotency_key,
            metadata={**charge.metadata, "payray_merchant_id": charge.merchant_id},
            description=charge.description,
            # not ``customer``: it names one of payray's customers, which the PSP does not know
        )
        fields = {
            "psp_reference": result.psp_reference,
            "failure_code": result.failure_code if result.status == "declined" else None,
            "failure_message": result.failure_message if result.status == "declined" else None,
        }
        detail = {"psp_status": result.status, "detail": result.detail} if result.detail else {}
        return heard(charge, PSP_EVENTS[result.status], fields, detail)

    def _capture_posting(self, charge: Charge) -> Any:
        return capture_posting(charge.id, charge.merchant_id, charge.amount, charge.fee)

    async def _post_ledger(self, charge: Charge) -> Next:
        return Book(charge)

    async def _book(self, charge: Charge, fields: dict[str, Any], detail: dict[str, Any]) -> Next:
        """Post the capture with the transitions it completes (``booking``) and the answer they decide, in
        one transaction of the merchant's wallet host. Refused, or unreachable after retries: the capture is
        recorded as such and compensated at the PSP."""
        chain = list(booking(charge.state))
        after = charge.evolve(
            state=chain[-1].target.value, **{k: v for k, v in fields.items() if v is not None}
        )
        rendered = charge_object(after)  # a booked charge has succeeded: its answer is 200 with the charge
        reply = Reply(200, dumps(rendered), after)
        answer = (reply.status, reply.body)
        completes = self._store.booking(
            ChargeWrite(charge, chain, fields, detail, answer, ("charge.succeeded", rendered))
        )
        posting = dataclasses.replace(self._capture_posting(charge), completes=completes)
        error = "ledger unavailable"
        for attempt in range(LEDGER_ATTEMPTS):
            try:
                result = await self._wallets.post(charge.merchant_id, posting)
            except Exception as exc:  # a dead host or database: retry, then compensate
                error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.05 * 4**attempt)
                continue
            if result.error is None and result.transaction_id is not None:
                if result.completed:
                    self._announce(after, chain)
                    return reply
                return await self._after_someone_else(charge.id, result.transaction_id)
            error = result.error or "posting refused"
            break
        log.error("ledger posting failed; compensating", extra={"payment_id": charge.id, "error": error})
        failed = list(booking_refused(charge.state))
        return Persist(charge, failed, fields, {**detail, "error": error[:500]})

    async def _after_someone_else(self, payment_id: str, transaction_id: str) -> Next:
        """The capture is booked but the charge had moved on (a webhook or recovery drives it too): answer
        with its state now, finishing the booking if that driver left it at ``captured``."""
        current = await self._store.load(payment_id)
        assert current is not None
        if current.state == ChargeState.CAPTURED:
            chain = list(booking(current.state))
            return Persist(current, chain, {"ledger_transaction_id": transaction_id})
        return reply_for(current)

    def _announce(self, charge: Charge, chain: list[Transition]) -> None:
        for transition in chain:
            self._on_transition(transition)
        log.info(
            "charge transition",
            extra={"payment_id": charge.id, "merchant_id": charge.merchant_id, "to": charge.state},
        )

    async def _refund_at_psp(self, charge: Charge) -> Next:
        assert charge.psp_reference is not None
        result = await self._psp.refund(
            payment_id=charge.id,
            psp_reference=charge.psp_reference,
            amount=charge.amount.amount,
            idempotency_key=f"payray-compensate-{charge.id}",
        )
        if result.status == "refunded":  # reconciliation matches the PSP's refund row by this id
            return advance(charge, ChargeEvent.PSP_REFUNDED, detail={"psp_refund": result.refund_reference})
        # The refund's fate is unknown: stay in refund_pending and let recovery retry with the same key.
        return reply_for(charge)

    async def _post_compensation(self, charge: Charge) -> Next:
        """Book the capture and its reversal, so the money the PSP moved twice is counted twice."""
        try:
            await self._wallets.post(charge.merchant_id, self._capture_posting(charge))
            reversal = refund_posting(
                f"compensation-{charge.id}", charge.merchant_id, charge.amount, charge.fee
            )
            result = await self._wallets.post(charge.merchant_id, reversal)
        except Exception:
            return reply_for(charge)  # recovery retries; both postings are idempotent
        if result.error is not None:
            return reply_for(charge)
        return advance(
            charge,
            ChargeEvent.COMPENSATION_POSTED,
            {
                "failure_code": "processing_error",
                "failure_message": "The charge was reversed after a processing error.",
            },
        )


class ChargeService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: ChargeFlow, fee_bps: int
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow
        self._fee_bps = fee_bps  # the rate of the fee each new charge stores

    async def create(self, merchant_id: str, key: str, body: ChargeCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/charges", body.model_dump(mode="json"))
        payment_id = new_id("ch")
        amount = Money(body.amount, body.currency)
        fresh = Charge(
            id=payment_id,
            merchant_id=merchant_id,
            amount=amount,
            fee=fee_for(amount, self._fee_bps),
            payment_method=body.payment_method,
            state=ChargeState.CREATED.value,
            idempotency_key=key,
            psp_idempotency_key=psp_idempotency_key(payment_id),
            created_at=None,  # type: ignore[arg-type]  # set by the database
            description=body.description,
            metadata=dict(body.metadata),
            customer=body.customer,
        )
        submit = step(ChargeState.CREATED, ChargeEvent.SUBMIT)

        async def create(conn: AsyncConnection[Any]) -> Charge | None:
            pending = fresh.evolve(state=submit.target.value)
            return await db.insert_charge(conn, pending, fingerprint, [submit], self._requests.lease_ms)

        async def start(charge: Charge) -> tuple[int, bytes]:
            reply = await self._flow.start(charge)
            return reply.status, reply.body

        async def resume(payment_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                charge = await db.load_charge(conn, payment_id)
            assert charge is not None
            reply = await self._flow.resume(charge)
            return reply.status, reply.body

        return await self._requests.run(merchant_id, key, fingerprint, Operation(create, start, resume))
