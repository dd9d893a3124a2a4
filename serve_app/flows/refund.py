"""The asyncio driver of the refund state machine (``payray.refund``): wallet debit, PSP refund, reversal.

As for charges, each transition is persisted (with the answer it decides, and its outbox row) before the
command it triggers runs, and every command is idempotent: the wallet debit and the reversal are ledger
postings keyed on the refund id, and the PSP refund carries a key derived from it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from actors.wallet import InsufficientFunds
from ledger.postings import Posting, refund_posting, refund_reversal_posting
from payray.errors import DependencyFailure
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.refund import (
    MACHINE,
    PSP_EVENTS,
    RefundCommand,
    RefundEvent,
    allowed_events,
    psp_refund_key,
    public_status,
    resume,
    step,
)
from psp.port import PaymentServiceProvider
from serve_app.flows.idempotent import Answer, IdempotentRequests, Operation
from serve_app.flows.psp_routes import PspRoutes
from serve_app.stores import refunds as db
from serve_app.stores.charges import Charge
from serve_app.stores.refunds import NewRefund, PostgresRefunds, Refund, RefundWrite
from serve_app.wallets import WalletDirectory
from serve_app.wire.render import charge_object, dumps, refund_object
from serve_app.wire.schemas import RefundCreate

log = logging.getLogger("payray.refund")

#: What the API answers (status and body), and stores under the idempotency key for replay.
Reply = tuple[int, bytes]


def reply_for(refund: Refund) -> Reply:
    """200 once the refund is settled either way; 202 while it is pending (a retry resumes it)."""
    status = 202 if public_status(refund.state) == "pending" else 200
    return status, dumps(refund_object(refund))


@dataclass(frozen=True)
class Persist:
    """Next: persist ``event`` in the refund's state, then do what its transition asks for."""

    refund: Refund
    event: RefundEvent
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Next: run the command a persisted transition asked for."""

    refund: Refund
    command: RefundCommand


class RefundStore(Protocol):
    """The refunds the refund flow reads and writes: Postgres in the service (``PostgresRefunds``), a dict
    in unit tests."""

    async def load(self, refund_id: str) -> Refund | None: ...

    async def apply(self, write: RefundWrite, conn: AsyncConnection[Any] | None = None) -> Refund | None:
        """Persist ``write`` (on ``conn``, inside its transaction, when given); None if the refund had moved
        on meanwhile."""
        ...

    async def charge_at_psp(self, charge_id: str) -> tuple[str, str]:
        """The PSP of the charge a refund gives back, and that PSP's reference for it."""
        ...

    async def charge(self, charge_id: str) -> Charge | None:
        """The charge a refund gives back, as it is now (for its ``charge.refunded`` event)."""
        ...

    async def discard(self, refund_id: str) -> None:
        """Forget a refund the balance did not cover, with its key and its reservation on the charge."""
        ...


class RefundFlow:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        psps: PspRoutes | PaymentServiceProvider,
        wallets: WalletDirectory,
        *,
        store: RefundStore | None = None,
    ) -> None:
        self._store = store if store is not None else PostgresRefunds(pool)
        #: the PSPs by name: a refund goes to the PSP its charge was made at
        self._psps = psps if isinstance(psps, PspRoutes) else PspRoutes.only(psps)
        self._wallets = wallets
        self._handlers: dict[RefundCommand, Callable[[Refund], Awaitable[Persist | Reply]]] = {
            RefundCommand.DEBIT_WALLET: self._debit_wallet,
            RefundCommand.REFUND_AT_PSP: self._refund_at_psp,
            RefundCommand.POST_REVERSAL: self._post_reversal,
            RefundCommand.BOOK_REFUND: self._book,
        }

    async def start(self, refund: Refund) -> Reply:
        """Drive a freshly inserted refund (``pending``, amount reserved on its charge) to its answer."""
        return await self._drive(Run(refund, RefundCommand.DEBIT_WALLET))

    async def resume(self, refund: Refund) -> Reply:
        """Finish an interrupted or pending refund from its persisted state."""
        resumption = resume(refund.state)
        if resumption.event is not None:
            return await self._drive(Persist(refund, resumption.event))
        if resumption.commands:
            (command,) = resumption.commands
            return await self._drive(Run(refund, command))
        return reply_for(refund)

    async def _drive(self, todo: Persist | Run | Reply) -> Reply:
        """Drive the machine: persist an event or run a command, each of which says what comes next, until
        one has the answer."""
        while isinstance(todo, Persist | Run):
            if isinstance(todo, Persist):
                todo = await self._advance(todo)
            elif todo.command in self._handlers:
                todo = await self._handlers[todo.command](todo.refund)
            else:  # respond: the answer is the state
                todo = reply_for(todo.refund)
        return todo

    async def _advance(self, todo: Persist) -> Run | Reply:
        refund = todo.refund
        stored, command, response = await self._persist(refund, todo.event, todo.fields, todo.detail)
        if stored is None:  # another driver moved it first: answer with what it has now
            current = await self._store.load(refund.id)
            assert current is not None
            return reply_for(current)
        log.info("refund transition", extra={"refund_id": refund.id, "to": stored.state})
        return response if response is not None else Run(stored, command)

    async def apply_psp_refunded(
        self, conn: AsyncConnection[Any], refund: Refund, psp_reference: str
    ) -> bool:
        """Persist, on ``conn`` and inside its transaction, that the PSP refunded a refund whose outcome we
        did not know (a webhook); stores the answer under its key. False if it had moved on."""
        event = PSP_EVENTS["refunded"]
        if event not in allowed_events(refund.state):
            return False
        fields = {"psp_reference": psp_reference}
        stored, _, _ = await self._persist(refund, event, fields, {"source": "webhook"}, conn=conn)
        return stored is not None

    async def _persist(
        self,
        refund: Refund,
        event: RefundEvent,
        fields: dict[str, Any],
        detail: dict[str, Any],
        conn: AsyncConnection[Any] | None = None,
    ) -> tuple[Refund | None, RefundCommand, Reply | None]:
        """Write one transition; one that decides the answer stores it (and its outbox row) with it."""
        transition = step(refund.state, event)
        (command,) = transition.commands
        after = refund.evolve(state=transition.target.value, **{k: v for k, v in fields.items() if v})
        response = outbox = charge_refunded = None
        if MACHINE.decides_answer(transition):
            response = reply_for(after)
            status = public_status(after.state)
            outbox = ("refund.failed" if status == "failed" else "refund.created", refund_object(after))
            if status == "succeeded" and (charge := await self._store.charge(refund.payment_id)):
                charge_refunded = charge_object(charge)
        stored = await self._store.apply(
            RefundWrite(refund, transition, fields, detail, response, outbox, charge_refunded), conn
        )
        return stored, command, response

    async def _debit_wallet(self, refund: Refund) -> Persist | Reply:
        amount, fee_returned = refund.amount, refund.fee_returned
        posting = refund_posting(refund.id, refund.merchant_id, amount, fee_returned)
        from_merchant = amount - fee_returned  # the platform gives back its share of the fee itself
        try:
            if from_merchant.is_positive():
                result = await self._wallets.debit(refund.merchant_id, posting, from_merchant)
            else:  # a refund of fee only: nothing leaves the merchant's balance
                result = await self._wallets.post(refund.merchant_id, posting)
        except InsufficientFunds as exc:  # (Ray's wrapper of the wallet's error: answer with our own)
            await self._store.discard(refund.id)
            raise InsufficientFunds(
                f"The available balance does not cover a refund of {amount}.", param="amount"
            ) from exc
        except Exception as exc:  # the refund stays pending; a retry with its key (or recovery) resumes it
            log.warning("wallet debit failed", exc_info=True, extra={"refund_id": refund.id})
            raise DependencyFailure("The merchant's wallet is unavailable; retry with the same key.") from exc
        if result.error is not None or result.transaction_id is None:
            raise DependencyFailure(f"the ledger refused refund {refund.id}: {result.error}")
        return Persist(refund, RefundEvent.FUNDS_HELD, {"ledger_transaction_id": result.transaction_id})

    async def _refund_at_psp(self, refund: Refund) -> Persist | Reply:
        psp, psp_reference = await self._store.charge_at_psp(refund.payment_id)
        result = await self._psps.adapter(psp).refund(
            payment_id=refund.payment_id,
            psp_reference=psp_reference,
            amount=refund.amount.amount,
            idempotency_key=refund.psp_idempotency_key,
            refund_id=refund.id,
        )
        fields = {
            "psp_reference": result.refund_reference,
            "failure_reason": result.detail if result.status == "failed" else None,
        }
        detail = {"psp_status": result.status, "detail": result.detail} if result.detail else {}
        return Persist(refund, PSP_EVENTS[result.status], fields, detail)

    async def _book(self, refund: Refund) -> Persist | Reply:
        """A refund the PSP made without us: the money is gone, so it is booked whatever the balance."""
        posting = refund_posting(refund.id, refund.merchant_id, refund.amount, refund.fee_returned)
        booked = await self._post(refund, posting)
        if booked is None:
            return reply_for(refund)
        return Persist(refund, RefundEvent.REFUND_BOOKED, {"ledger_transaction_id": booked})

    async def _post_reversal(self, refund: Refund) -> Persist | Reply:
        reversal = refund_reversal_posting(refund.id, refund.merchant_id, refund.amount, refund.fee_returned)
        if await self._post(refund, reversal) is None:
            return reply_for(refund)
        return Persist(refund, RefundEvent.REVERSAL_POSTED)

    async def _post(self, refund: Refund, posting: Posting) -> str | None:
        """Post through the wallet without a funds check; the ledger transaction, or None when it failed and
        the refund stays where it is for a retry or recovery (the posting is idempotent)."""
        try:
            result = await self._wallets.post(refund.merchant_id, posting)
        except Exception:
            log.warning("%s not posted yet", posting.kind, exc_info=True, extra={"refund_id": refund.id})
            return None
        return result.transaction_id if result.error is None else None


class RefundService:
    def __init__(
        self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests, flow: RefundFlow
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow

    async def create(self, merchant_id: str, key: str, body: RefundCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/refunds", body.model_dump(mode="json"))
        refund_id = new_id("re")
        fresh = NewRefund(
            id=refund_id,
            merchant_id=merchant_id,
            charge_id=body.charge,
            idempotency_key=key,
            psp_idempotency_key=psp_refund_key(refund_id),
            reason=body.reason,
            metadata=dict(body.metadata),
            requested=body.amount,
        )

        async def create(conn: AsyncConnection[Any]) -> Refund | None:
            return await db.insert_refund(conn, fresh, fingerprint, self._requests.lease_ms)

        async def resume(refund_id: str) -> Reply:
            async with self._pool.connection() as conn:
                refund = await db.load_refund(conn, refund_id)
            assert refund is not None
            return await self._flow.resume(refund)

        return await self._requests.run(
            merchant_id, key, fingerprint, Operation(create, self._flow.start, resume)
        )
