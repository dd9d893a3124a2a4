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
from typing import Any, Literal, Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ledger.postings import (
    Posting,
    Statement,
    capture_posting,
    fee_for,
    hold_posting,
    refund_posting,
    release_posting,
)
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
    attempt_key,
    booking,
    booking_refused,
    decides_answer,
    hold_booking,
    psp_cancel_key,
    psp_capture_key,
    psp_idempotency_key,
    release_booking,
    resume,
    step,
    with_automatic,
)
from payray.errors import InvalidRequest, NotFound
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.money import Money
from payray.routing import attempt_end, may_cascade
from psp.port import PaymentServiceProvider
from serve_app.flows.idempotent import PENDING, Answer, IdempotentRequests, Operation
from serve_app.flows.psp_routes import PspRoutes
from serve_app.flows.recent import RecentOutcomes
from serve_app.stores import charges as db
from serve_app.stores.charges import Charge, ChargeWrite, EndedAttempt, PostgresCharges
from serve_app.stores.intents import Following
from serve_app.wallets import WalletDirectory
from serve_app.wire.render import charge_object, decline_object, dumps
from serve_app.wire.schemas import ChargeCreate

log = logging.getLogger("payray.charge")
LEDGER_ATTEMPTS = 3
#: How a new charge is created: submitted, in the statement that inserts it.
SUBMIT = step(ChargeState.CREATED, ChargeEvent.SUBMIT)


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
    ended: EndedAttempt | None = None  # the attempt a failover leaves behind


#: What a ``Book`` posts: the capture (``booking``), an authorization's hold (``hold_booking``) or its
#: release (``release_booking``).
Booked = Literal["capture", "hold", "release"]
BOOKINGS: dict[Booked, Callable[[str], tuple[Transition, ...]]] = {
    "capture": booking,
    "hold": hold_booking,
    "release": release_booking,
}
#: The PSP's word that is booked rather than only persisted, and what it books.
BOOKED_BY: dict[ChargeEvent, Booked] = {
    ChargeEvent.PSP_CAPTURED: "capture",
    ChargeEvent.PSP_AUTHORIZED: "hold",
    ChargeEvent.PSP_CANCELED: "release",
}


@dataclass(frozen=True)
class Book:
    """Next: post the capture, hold or release with the transitions it completes, in one transaction."""

    charge: Charge
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    what: Booked = "capture"


@dataclass(frozen=True)
class Run:
    """Next: run the command a persisted transition asked for. ``fresh``: a PSP call this driver makes for
    the first time under its key (just submitted, or just failed over), so a refused connection proves the
    PSP never saw the attempt; a resumed or retried call may follow one that reached it."""

    charge: Charge
    command: Command
    fresh: bool = False


#: What the driver does next; a ``Reply`` ends the drive.
Next = Persist | Book | Run | Reply


def reply_for(charge: Charge) -> Reply:
    """The response a charge in its current state deserves."""
    state = ChargeState(charge.state)
    if state in (ChargeState.SUCCEEDED, ChargeState.REQUIRES_CAPTURE, ChargeState.CANCELED):
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
    """Next, on the PSP's word: a capture, an authorization or its release is booked with its posting; any
    other answer is persisted."""
    if event in BOOKED_BY:
        return Book(charge, fields, detail, BOOKED_BY[event])
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
        psps: PspRoutes | PaymentServiceProvider,
        wallets: WalletDirectory,
        on_transition: Callable[[Transition], None] | None = None,
        *,
        store: ChargeStore | None = None,
        follow: Callable[[Charge], Awaitable[Following | None]] | None = None,
    ) -> None:
        self._store = store if store is not None else PostgresCharges(pool)
        #: the transition of the PaymentIntent a charge's write carries, if it changes the intent
        self._follow = follow
        #: the PSPs by name (one PSP alone routes every payment to it, as Stripe)
        self.psps = psps if isinstance(psps, PspRoutes) else PspRoutes.only(psps)
        self._wallets = wallets
        self._on_transition = on_transition or (lambda t: None)
        #: payments this driver saw past the PSP, and those it is driving now (for the webhooks)
        self.outcomes = RecentOutcomes()
        self._handlers: dict[Command, Callable[[Charge], Awaitable[Next]]] = {
            Command.CALL_PSP: self._call_psp,
            Command.POST_LEDGER: self._post_ledger,
            Command.REFUND_AT_PSP: self._refund_at_psp,
            Command.POST_COMPENSATION: self._post_compensation,
            Command.POST_HOLD: self._post_hold,
            Command.CAPTURE_AT_PSP: self._capture_at_psp,
            Command.CANCEL_AT_PSP: self._cancel_at_psp,
            Command.POST_RELEASE: self._post_release,
        }

    async def start(self, charge: Charge) -> Reply:
        """Drive a freshly inserted charge (already ``psp_pending``) to its answer."""
        async with self.outcomes.driving(charge.id):
            reply = await self._drive(Run(charge, Command.CALL_PSP, fresh=True))
        if reply.charge.psp_idempotency_key == charge.psp_idempotency_key:
            # not one that failed over: a success at a PSP it left would be news (``late_success``)
            self.outcomes.saw(reply.charge.id, reply.charge.state)
        return reply

    async def settle(self, charge: Charge) -> Reply:
        """Drive an authorization whose capture or cancel was just persisted (``capture_pending`` or
        ``cancel_pending``) to its answer: the command that transition asked for."""
        (command,) = resume(charge.state).commands
        async with self.outcomes.driving(charge.id):
            reply = await self._drive(Run(charge, command))
        self.outcomes.saw(reply.charge.id, reply.charge.state)
        return reply

    async def begin(
        self,
        charge: Charge,
        event: ChargeEvent,
        fields: dict[str, Any],
        conn: AsyncConnection[Any] | None = None,
    ) -> Charge | None:
        """Persist a merchant's (or the expiry's) ``capture`` or ``cancel`` of an authorization, on ``conn``
        inside its transaction when given; None if the charge moved on meanwhile. ``settle`` drives it."""
        chain = [step(charge.state, event)]
        intent = await self._following(charge.evolve(state=chain[-1].target.value, **fields))
        return await self._store.apply(ChargeWrite(charge, chain, fields, {}, intent=intent), conn)

    async def release(self, charge: Charge, reason: str) -> Reply:
        """Cancel an authorization (``requires_capture``) and release its hold: the expiry's way."""
        begun = await self.begin(charge, ChargeEvent.CANCEL, {"cancellation_reason": reason})
        if begun is None:
            current = await self._store.load(charge.id)
            assert current is not None
            return reply_for(current)
        return await self.settle(begun)

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
        captured or declined, it goes on from there; not found, it goes on to the merchant's next PSP, or
        failed when there is none. Every other state resumes."""
        if charge.state not in AWAITING_PSP:
            return await self.resume(charge)
        found = await self._psp(charge).lookup(payment_id=charge.id)
        if found is None and (failover := await self._failover(charge, "not_found")) is not None:
            return await self._drive(failover)
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
                persisted = await self._persist(
                    todo.charge, todo.chain, todo.fields, todo.detail, ended=todo.ended
                )
                todo = await self._after_commit(persisted)
            elif isinstance(todo, Book):
                todo = await self._book(todo)
            elif todo.command in AUTOMATIC:
                todo = advance(todo.charge, AUTOMATIC[todo.command])
            elif todo.command is Command.CALL_PSP:
                todo = await self._call_psp(todo.charge, fresh=todo.fresh)
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
        ended: EndedAttempt | None = None,
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
        following = await self._following(after)
        write = ChargeWrite(charge, chain, fields, detail, answer, outbox, following, ended)
        stored = await self._store.apply(write, conn)
        return Persisted(charge, stored, chain, commands, response)

    async def _following(self, after: Charge) -> Following | None:
        """The intent's transition that the charge's write (leaving it as ``after``) carries, if any."""
        if self._follow is None or after.payment_intent_id is None:
            return None
        return await self._follow(after)

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
        return Run(stored, command, fresh=persisted.chain[-1].event is ChargeEvent.PSP_FAILED_OVER)

    def _psp(self, charge: Charge) -> PaymentServiceProvider:
        """The PSP of the charge's current attempt: everything about a payment goes where it was made."""
        return self.psps.adapter(charge.psp)

    async def _call_psp(self, charge: Charge, fresh: bool = False) -> Next:
        """Ask the attempt's PSP to charge; its answer feeds that PSP's breaker, and a definite failure
        another PSP could turn into a success goes on to the merchant's next PSP (``payray.routing``; a
        ``fresh`` call is the attempt's first)."""
        started = self.psps.clock()
        result = await self._psp(charge).capture(
            payment_id=charge.id,
            amount=charge.amount.amount,
            currency=charge.currency,
            payment_method=charge.payment_method,
            idempotency_key=charge.psp_idempotency_key,
            metadata={**charge.metadata, "payray_merchant_id": charge.merchant_id},
            description=charge.description,
            # not ``customer``: it names one of payray's customers, which the PSP does not know
            capture_method="manual" if charge.capture_method == "manual" else "automatic",
        )
        end = attempt_end(result.status, result.refusal)
        self.psps.record(charge.psp, charge.currency, end, self.psps.clock() - started)
        if may_cascade(end, result.failure_code, first_call=fresh):
            failover = await self._failover(charge, end, result.psp_reference, result.failure_code)
            if failover is not None:
                return failover
        fields = {
            "psp_reference": result.psp_reference,
            "failure_code": result.failure_code if result.status == "declined" else None,
            "failure_message": result.failure_message if result.status == "declined" else None,
        }
        detail = {"psp_status": result.status, "detail": result.detail} if result.detail else {}
        return heard(charge, PSP_EVENTS[result.status], fields, detail)

    async def _failover(
        self,
        charge: Charge,
        end: str,
        psp_reference: str | None = None,
        failure_code: str | None = None,
    ) -> Persist | None:
        """The payment's next attempt, at the merchant's next PSP, with the one that ended (``end``: a
        definite failure, or ``not_found`` by recovery's search) recorded; None when there is no PSP left
        to try (the failure then stands)."""
        following = await self.psps.after(charge.merchant_id, charge.psp, charge.currency)
        if following is None:
            return None
        ended = EndedAttempt(charge.psp_idempotency_key, charge.psp, psp_reference, end, failure_code)
        log.warning(
            "payment fails over",
            extra={"payment_id": charge.id, "from": charge.psp, "to": following, "end": end},
        )
        fields = {"psp": following, "psp_idempotency_key": attempt_key(charge.id, following)}
        detail = {"from_psp": charge.psp, "ended": end, "failure_code": failure_code}
        return Persist(charge, [step(charge.state, ChargeEvent.PSP_FAILED_OVER)], fields, detail, ended)

    def _capture_posting(self, charge: Charge) -> Posting:
        """The capture's posting; an authorization's also releases its whole hold."""
        authorized = charge.amount if charge.capture_method == "manual" else None
        return capture_posting(
            charge.id, charge.merchant_id, charge.captured_amount, charge.fee, authorized=authorized
        )

    def _posting(self, charge: Charge, what: Booked) -> Posting:
        if what == "hold":
            return hold_posting(charge.id, charge.merchant_id, charge.amount)
        if what == "release":
            return release_posting(charge.id, charge.merchant_id, charge.amount)
        return self._capture_posting(charge)

    async def _post_ledger(self, charge: Charge) -> Next:
        return Book(charge)

    async def _post_hold(self, charge: Charge) -> Next:
        return Book(charge, what="hold")

    async def _post_release(self, charge: Charge) -> Next:
        return Book(charge, what="release")

    async def _book(self, todo: Book) -> Next:
        """Post the capture, hold or release with the transitions it completes and the answer they decide,
        in one transaction of the merchant's wallet host. A capture refused, or unreachable after retries, is
        recorded as such and compensated at the PSP; a hold or release (never refused: it moves no available
        funds) that cannot be written is left to recovery, the PSP's word recorded."""
        charge, fields, detail, what = todo.charge, todo.fields, todo.detail, todo.what
        chain = list(BOOKINGS[what](charge.state))
        after = charge.evolve(
            state=chain[-1].target.value, **{k: v for k, v in fields.items() if v is not None}
        )
        rendered = charge_object(after)  # a booked charge is answered 200 with itself
        reply = Reply(200, dumps(rendered), after)
        # The request that created the charge is answered by its capture or its hold; a later capture or
        # release answers its own request, and leaves the first answer as it was.
        answers_creation = what == "hold" or charge.capture_method == "automatic"
        answer = (reply.status, reply.body) if answers_creation else None
        outbox = (announced(after, what), rendered)
        completes = self._store.booking(
            ChargeWrite(charge, chain, fields, detail, answer, outbox, await self._following(after))
        )
        posting = dataclasses.replace(self._posting(after, what), completes=completes)
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
        if what != "capture":
            log.error("ledger %s failed; left to recovery", what, extra={"payment_id": charge.id})
            heard_first = chain[:-1]  # the PSP's word, when this booking was to record it
            if heard_first:
                return Persist(charge, heard_first, fields, {**detail, "error": error[:500]})
            return reply_for(charge)
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
        result = await self._psp(charge).refund(
            payment_id=charge.id,
            psp_reference=charge.psp_reference,
            amount=charge.captured_amount.amount,
            idempotency_key=f"payray-compensate-{charge.id}",
        )
        if result.status == "refunded":  # reconciliation matches the PSP's refund row by this id
            return advance(charge, ChargeEvent.PSP_REFUNDED, detail={"psp_refund": result.refund_reference})
        # The refund's fate is unknown: stay in refund_pending and let recovery retry with the same key.
        return reply_for(charge)

    async def _capture_at_psp(self, charge: Charge) -> Next:
        """Capture the part of the authorization asked for (``amount_captured``), under a key derived from the
        charge: captured, it is booked; gone at the PSP (canceled or expired there), its hold is released;
        unknown, it stays ``capture_pending`` and recovery asks again under the same key."""
        assert charge.psp_reference is not None
        result = await self._psp(charge).capture_authorized(
            payment_id=charge.id,
            psp_reference=charge.psp_reference,
            amount=charge.captured_amount.amount,
            idempotency_key=psp_capture_key(charge.id),
        )
        if result.status in ("captured", "canceled"):
            return heard(charge, PSP_EVENTS[result.status], {}, {"psp_status": result.status})
        log.warning("capture of authorization unknown", extra={"payment_id": charge.id})
        return reply_for(charge)

    async def _cancel_at_psp(self, charge: Charge) -> Next:
        """Release the authorization at the PSP: released there, the hold is released here; anything else
        (unknown, or captured after all) stays ``cancel_pending`` for recovery and reconciliation."""
        assert charge.psp_reference is not None
        result = await self._psp(charge).cancel_authorization(
            payment_id=charge.id,
            psp_reference=charge.psp_reference,
            idempotency_key=psp_cancel_key(charge.id),
        )
        if result.status == "canceled":
            return heard(charge, ChargeEvent.PSP_CANCELED, {}, {"psp_status": "canceled"})
        log.warning(
            "cancel of authorization not confirmed",
            extra={"payment_id": charge.id, "psp_status": result.status, "detail": result.detail},
        )
        return reply_for(charge)

    async def _post_compensation(self, charge: Charge) -> Next:
        """Book the capture and its reversal, so the money the PSP moved twice is counted twice."""
        try:
            await self._wallets.post(charge.merchant_id, self._capture_posting(charge))
            reversal = refund_posting(
                f"compensation-{charge.id}", charge.merchant_id, charge.captured_amount, charge.fee
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


def announced(charge: Charge, what: Booked) -> str:
    """The event a booking announces, as Stripe names it: an authorization or an automatic capture is
    ``charge.succeeded``, the capture of an authorization ``charge.captured``, a release ``charge.expired``
    when the authorization ran out and ``charge.refunded`` when it was canceled."""
    if what == "hold" or (what == "capture" and charge.capture_method == "automatic"):
        return "charge.succeeded"
    if what == "capture":
        return "charge.captured"
    return "charge.expired" if charge.cancellation_reason == "expired" else "charge.refunded"


class ChargeService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: ChargeFlow, fee_bps: int
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow
        self._fee_bps = fee_bps  # the rate of the fee each new charge stores

    def fee(self, amount: Money) -> Money:
        """The fee a capture of ``amount`` takes, at the rate this service charges new charges."""
        return fee_for(amount, self._fee_bps)

    def fresh_charge(
        self,
        merchant_id: str,
        amount: Money,
        payment_method: str,
        *,
        key: str,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        customer: str | None = None,
        capture_method: str = "automatic",
        payment_intent_id: str | None = None,
        psp: str = "stripe",
    ) -> Charge:
        """A new charge, submitted (``psp_pending``) at ``psp`` (``route`` picks it) and not yet inserted:
        ``insert`` writes it."""
        payment_id = new_id("ch")
        return Charge(
            id=payment_id,
            merchant_id=merchant_id,
            amount=amount,
            fee=self.fee(amount),
            payment_method=payment_method,
            state=SUBMIT.target.value,
            idempotency_key=key,
            psp_idempotency_key=psp_idempotency_key(payment_id),
            created_at=None,  # type: ignore[arg-type]  # set by the database
            description=description,
            metadata=dict(metadata or {}),
            customer=customer,
            capture_method=capture_method,
            payment_intent_id=payment_intent_id,
            psp=psp,
        )

    async def route(self, merchant_id: str, currency: str) -> str:
        """The PSP a new payment of the merchant goes to."""
        return await self._flow.psps.first(merchant_id, currency)

    async def insert(self, conn: AsyncConnection[Any], charge: Charge, fingerprint: bytes) -> Charge | None:
        """Insert a ``fresh_charge`` and claim its key in one statement; None if the key was taken."""
        return await db.insert_charge(conn, charge, fingerprint, [SUBMIT], self._requests.lease_ms)

    async def create(self, merchant_id: str, key: str, body: ChargeCreate) -> Answer:
        fields = body.model_dump(mode="json")
        if fields["capture"]:
            del fields["capture"]  # the default: fingerprints stay those of requests before it existed
        fingerprint = request_fingerprint("POST", "/v1/charges", fields)
        fresh = self.fresh_charge(
            merchant_id,
            Money(body.amount, body.currency),
            body.payment_method,
            key=key,
            description=body.description,
            metadata=body.metadata,
            customer=body.customer,
            capture_method="automatic" if body.capture else "manual",
            psp=await self.route(merchant_id, body.currency),
        )

        async def create(conn: AsyncConnection[Any]) -> Charge | None:
            return await self.insert(conn, fresh, fingerprint)

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

    async def capture(self, merchant_id: str, charge_id: str, key: str, amount: int | None) -> Answer:
        """``POST /v1/charges/{id}/capture``: capture ``amount`` (all of it by default) of an authorization,
        releasing the rest. The key is claimed in the transaction that records the capture, so a refused
        request leaves nothing behind and a retry replays the answer."""
        fingerprint = request_fingerprint("POST", f"/v1/charges/{charge_id}/capture", {"amount": amount})

        async def create(conn: AsyncConnection[Any]) -> Charge | None:
            async with conn.transaction():
                if not await db.claim_key_for(
                    conn, merchant_id, key, fingerprint, charge_id, self._requests.lease_ms
                ):
                    return None
                charge = await db.lock_merchant_charge(conn, charge_id, merchant_id)
                if charge is None:
                    raise NotFound(f"No such charge: '{charge_id}'", param="id")
                to_capture = capturable(charge, amount)
                fields = {"amount_captured": to_capture.amount, "fee": self.fee(to_capture).amount}
                begun = await self._flow.begin(charge, ChargeEvent.CAPTURE, fields, conn)
                assert begun is not None, "the charge is locked by this transaction"
                return begun

        async def start(charge: Charge) -> tuple[int, bytes]:
            return await self._answer(merchant_id, key, await self._flow.settle(charge))

        async def resume(payment_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                charge = await db.load_charge(conn, payment_id)
            assert charge is not None
            return await self._answer(merchant_id, key, await self._flow.recover(charge))

        return await self._requests.run(merchant_id, key, fingerprint, Operation(create, start, resume))

    async def _answer(self, merchant_id: str, key: str, reply: Reply) -> tuple[int, bytes]:
        """A capture's answer, stored under its key once final (a pending one is asked again on retry)."""
        if reply.status != PENDING:
            async with self._pool.connection() as conn:
                await db.store_answer(conn, merchant_id, key, reply.status, reply.body)
        return reply.status, reply.body


def capturable(charge: Charge, amount: int | None, *, param: str = "amount") -> Money:
    """What a capture of ``charge`` may take: ``amount`` (the whole authorization if None), refused as
    Stripe refuses it when the charge is no authorization waiting for its capture, or for more than it
    holds (the parameter that asked for it is ``param``)."""
    state = ChargeState(charge.state)
    if state is not ChargeState.REQUIRES_CAPTURE:
        if charge.capture_method == "manual" and state in CAPTURED_OR_CAPTURING:
            raise InvalidRequest(
                f"Charge {charge.id} has already been captured.", code="charge_already_captured", param="id"
            )
        if state in RELEASING:
            raise InvalidRequest(
                f"Charge {charge.id} has expired or been canceled, and can no longer be captured.",
                code="charge_expired_for_capture",
                param="id",
            )
        raise InvalidRequest(
            f"Charge {charge.id} cannot be captured: it is not an authorization waiting for its capture.",
            code="charge_not_capturable",
            param="id",
        )
    if amount is None:
        return charge.amount
    if amount > charge.amount.amount:
        raise InvalidRequest(
            f"Amount to capture ({amount}) is more than the authorized amount ({charge.amount.amount}).",
            code="amount_too_large",
            param=param,
        )
    return Money(amount, charge.currency)


CAPTURED_OR_CAPTURING = frozenset(
    {
        ChargeState.CAPTURE_PENDING,
        ChargeState.CAPTURED,
        ChargeState.POSTED,
        ChargeState.SUCCEEDED,
        ChargeState.REFUND_PENDING,
        ChargeState.COMPENSATED,
        ChargeState.FAILED,
    }
)
RELEASING = frozenset({ChargeState.CANCEL_PENDING, ChargeState.RELEASED, ChargeState.CANCELED})
