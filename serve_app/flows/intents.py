"""PaymentIntents: the merchant's requests, each behind the idempotency layers, over the charge flow.

An intent moves by the pure machine in ``payray.intent``. Its confirmation creates a charge in the same
transaction as the ``confirm`` transition, and the charge flow drives that charge as it drives any other;
every charge transition that changes the intent carries the intent's transition in its own statement
(``IntentFollower``). A capture or cancel of an authorized intent is its charge's (``ChargeFlow.begin``,
then ``settle``), persisted with the claim of the request's key, so a refused request leaves nothing
behind and a retry replays the answer or finishes what the first request began.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from payray import intent as machine
from payray.charge import ChargeEvent
from payray.errors import IllegalTransition, InvalidRequest, NotFound
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from payray.intent import IntentEvent, IntentState
from payray.metadata import merged_metadata
from payray.money import Money
from serve_app.flows.charge import ChargeFlow, ChargeService, Reply, capturable
from serve_app.flows.idempotent import PENDING, Answer, IdempotentRequests, Operation
from serve_app.stores import charges as charges_db
from serve_app.stores import intents as store
from serve_app.stores.charges import Charge
from serve_app.stores.intents import Following, Intent, IntentWrite
from serve_app.wire.render import dumps, intent_decline_object, intent_object, payment_error
from serve_app.wire.schemas import IntentCancel, IntentCapture, IntentConfirm, IntentCreate, IntentUpdate


def no_such_intent(intent_id: str) -> NotFound:
    return NotFound(f"No such payment_intent: '{intent_id}'", param="id")


def unexpected_state(intent: Intent, action: str, allowed: str) -> InvalidRequest:
    """Stripe's refusal of an action the intent's status does not allow."""
    message = (
        f"This PaymentIntent's {action} could not be performed because it has a status of {intent.state}. "
        f"{allowed}"
    )
    return InvalidRequest(message, code="payment_intent_unexpected_state", param="id")


class IntentFollower:
    """What the charge flow asks before each write of a charge that an intent confirmed: the intent's
    transition to carry in the same statement (``serve_app.stores.intents.FOLLOW``), if any."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def __call__(self, charge: Charge) -> Following | None:
        assert charge.payment_intent_id is not None
        async with self._pool.connection() as conn:
            intent = await store.intent_of_charge(conn, charge.payment_intent_id, charge.id)
        if intent is None:  # a later confirmation made another charge the latest
            return None
        transition = machine.follow(intent.state, charge.state)
        if transition is None:
            return None
        target = transition.target
        error = payment_error(charge) if target is IntentState.REQUIRES_PAYMENT_METHOD else None
        after = intent.evolve(
            state=target.value,
            amount_received=charge.captured_amount.amount if target is IntentState.SUCCEEDED else 0,
            last_payment_error=error or intent.last_payment_error,
            payment_method=None if error else intent.payment_method,
            cancellation_reason=intent.cancellation_reason
            or ("automatic" if charge.cancellation_reason == "expired" else None),
            canceled_at=datetime.now(UTC) if target is IntentState.CANCELED else intent.canceled_at,
        )
        return Following(transition, machine.TOPICS.get(target), intent_object(after), error)


def answer_for(intent: Intent) -> tuple[int, bytes]:
    """What a request that moved the intent answers: a failed payment is a 402 carrying the intent, one
    still on its way a 202 (asked again on retry), anything else 200."""
    if intent.state == IntentState.REQUIRES_PAYMENT_METHOD and intent.last_payment_error is not None:
        return 402, dumps(intent_decline_object(intent))
    if intent.state == IntentState.PROCESSING:
        return PENDING, dumps(intent_object(intent))
    return 200, dumps(intent_object(intent))


class IntentService:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        requests: IdempotentRequests,
        flow: ChargeFlow,
        charges: ChargeService,
    ) -> None:
        self._pool = pool
        self._requests = requests
        self._flow = flow
        self._charges = charges

    # -- creating and confirming ---------------------------------------------------------------------------

    async def create(self, merchant_id: str, key: str, body: IntentCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/payment_intents", body.model_dump(mode="json"))
        has_method = body.payment_method is not None
        fresh = Intent(
            id=new_id("pi"),
            merchant_id=merchant_id,
            amount=Money(body.amount, body.currency),
            capture_method=body.capture_method,
            state=(IntentState.REQUIRES_CONFIRMATION if has_method else IntentState.REQUIRES_PAYMENT_METHOD),
            idempotency_key=key,
            created_at=datetime.now(UTC),
            payment_method=body.payment_method,
            customer=body.customer,
            description=body.description,
            metadata=dict(body.metadata),
        )
        created = intent_object(fresh)
        answer = None if body.confirm else (200, dumps(created))

        async def create(conn: AsyncConnection[Any]) -> Charge | Intent | None:
            async with conn.transaction():
                intent = await store.insert_intent(
                    conn, fresh, fingerprint, self._requests.lease_ms, answer, created
                )
                if intent is None or not body.confirm:
                    return intent
                return await self._confirm_in(conn, intent, None, fingerprint)

        async def start(made: Charge | Intent) -> tuple[int, bytes]:
            if isinstance(made, Intent):
                return 200, dumps(intent_object(made))
            return await self._answer(merchant_id, key, await self._flow.start(made))

        operation: Operation[Any] = Operation(create, start, self._resumer(merchant_id, key))
        return await self._requests.run(merchant_id, key, fingerprint, operation)

    async def confirm(self, merchant_id: str, intent_id: str, key: str, body: IntentConfirm) -> Answer:
        """Confirm the intent (with the payment method ``body`` brings, or the one it has): its charge is
        created with the confirmation and driven to its answer."""

        async def confirm_in(conn: AsyncConnection[Any], intent: Intent, fingerprint: bytes) -> Charge:
            return await self._confirm_in(conn, intent, body.payment_method, fingerprint)

        return await self._request(merchant_id, intent_id, key, "confirm", body, confirm_in, self._flow.start)

    async def _confirm_in(
        self, conn: AsyncConnection[Any], intent: Intent, payment_method: str | None, fingerprint: bytes
    ) -> Charge:
        """Inside the caller's transaction: the confirm transitions and the charge they create."""
        try:
            chain = machine.confirmation(intent.state, payment_method is not None)
        except IllegalTransition:
            if intent.state == IntentState.REQUIRES_PAYMENT_METHOD:
                message = "You cannot confirm this PaymentIntent because it's missing a payment method."
                raise InvalidRequest(
                    message, code="payment_intent_unexpected_state", param="payment_method"
                ) from None
            allowed = "Only a PaymentIntent that requires confirmation or a payment method may be confirmed."
            raise unexpected_state(intent, "confirmation", allowed) from None
        method = payment_method or intent.payment_method
        assert method is not None, "the machine confirms only an intent with a payment method"
        charge = self._charges.fresh_charge(
            intent.merchant_id,
            intent.amount,
            method,
            key=f"payray-intent-{intent.id}-{new_id('ch')}",
            description=intent.description,
            metadata=intent.metadata,
            customer=intent.customer,
            capture_method=intent.capture_method,
            payment_intent_id=intent.id,
            psp=await self._charges.route(intent.merchant_id, intent.amount.currency),
        )
        inserted = await self._charges.insert(conn, charge, fingerprint)
        assert inserted is not None, "the charge's own key is new"
        write = IntentWrite(
            intent, chain, payment_method=method, set_payment_method=True, charge_id=inserted.id
        )
        moved = await store.apply_transitions(conn, write)
        assert moved is not None, "the intent is locked by this transaction"
        return inserted

    # -- capturing and canceling ---------------------------------------------------------------------------

    async def capture(self, merchant_id: str, intent_id: str, key: str, body: IntentCapture) -> Answer:
        """Capture ``amount_to_capture`` (all of it by default) of an authorized intent's charge; the rest
        is released."""

        async def capture_in(conn: AsyncConnection[Any], intent: Intent, _: bytes) -> Charge:
            if intent.state != IntentState.REQUIRES_CAPTURE:
                allowed = "Only a PaymentIntent with a status of requires_capture may be captured."
                raise unexpected_state(intent, "capture", allowed)
            charge = await self._locked_charge(conn, intent)
            to_capture = capturable(charge, body.amount_to_capture, param="amount_to_capture")
            fields = {"amount_captured": to_capture.amount, "fee": self._charges.fee(to_capture).amount}
            return await self._begin(conn, charge, ChargeEvent.CAPTURE, fields)

        return await self._request(
            merchant_id, intent_id, key, "capture", body, capture_in, self._flow.settle
        )

    async def cancel(self, merchant_id: str, intent_id: str, key: str, body: IntentCancel) -> Answer:
        """Cancel the intent: at once when it has no authorization; an authorized one's charge is canceled
        at the PSP and its hold released."""
        reason = body.cancellation_reason

        async def cancel_in(conn: AsyncConnection[Any], intent: Intent, _: bytes) -> Charge | Intent:
            if intent.state == IntentState.REQUIRES_CAPTURE:
                await store.set_cancellation_reason(conn, intent.id, reason)
                charge = await self._locked_charge(conn, intent)
                fields = {"cancellation_reason": reason or "requested"}
                return await self._begin(conn, charge, ChargeEvent.CANCEL, fields)
            if IntentEvent.CANCEL not in machine.allowed_events(intent.state):
                allowed = (
                    "Only a PaymentIntent with a status of requires_payment_method, "
                    "requires_confirmation or requires_capture may be canceled."
                )
                raise unexpected_state(intent, "cancellation", allowed)
            transition = machine.step(intent.state, IntentEvent.CANCEL)
            after = intent.evolve(
                state=transition.target.value, cancellation_reason=reason, canceled_at=datetime.now(UTC)
            )
            topic = machine.TOPICS[transition.target]
            write = IntentWrite(
                intent, (transition,), cancellation_reason=reason, topic=topic, event=intent_object(after)
            )
            moved = await store.apply_transitions(conn, write)
            assert moved is not None, "the intent is locked by this transaction"
            return moved

        return await self._request(merchant_id, intent_id, key, "cancel", body, cancel_in, self._flow.settle)

    # -- reading and updating ------------------------------------------------------------------------------

    async def update(self, merchant_id: str, intent_id: str, body: IntentUpdate) -> dict[str, Any]:
        """Change what the intent says: what it charges only before its confirmation (a payment method
        attached makes it ``requires_confirmation``), its description and metadata at any time."""
        sent = body.model_fields_set - {"payment_method_types"}
        async with self._pool.connection() as conn, conn.transaction():
            intent = await store.lock_intent(conn, intent_id, merchant_id)
            if intent is None:
                raise no_such_intent(intent_id)
            charging = sent & {"amount", "currency", "capture_method", "payment_method", "customer"}
            if charging and intent.state not in machine.CHANGEABLE:
                allowed = (
                    f"Only {', '.join(sorted(charging))} of a PaymentIntent that requires a payment "
                    "method or confirmation may change."
                )
                raise unexpected_state(intent, "update", allowed)
            attached = None
            if body.payment_method is not None:
                attached = machine.step(intent.state, IntentEvent.PAYMENT_METHOD_ATTACHED)
            changed = intent.evolve(
                amount=Money(
                    body.amount if body.amount is not None else intent.amount.amount,
                    body.currency or intent.currency,
                ),
                capture_method=body.capture_method or intent.capture_method,
                payment_method=body.payment_method or intent.payment_method,
                customer=body.customer if "customer" in sent else intent.customer,
                description=body.description if "description" in sent else intent.description,
                metadata=merged_metadata(intent.metadata, body.metadata),
                state=attached.target.value if attached is not None else intent.state,
            )
            if changed == intent:
                return intent_object(intent)
            saved = await store.set_details(conn, intent, changed, attached)
            if saved is None:
                message = f"No such customer: '{changed.customer}'"
                raise InvalidRequest(message, code="resource_missing", param="customer")
        return intent_object(saved)

    # -- shared steps --------------------------------------------------------------------------------------

    async def _request(
        self,
        merchant_id: str,
        intent_id: str,
        key: str,
        action: str,
        body: BaseModel,
        act: Callable[[AsyncConnection[Any], Intent, bytes], Awaitable[Charge | Intent]],
        drive: Callable[[Charge], Awaitable[Reply]],
    ) -> Answer:
        """A keyed request about an existing intent (``POST /v1/payment_intents/{id}/<action>``): its key is
        claimed and the intent locked in the transaction in which ``act`` persists what the request does,
        so a refused request leaves no key behind. ``act`` answers the charge it began, which ``drive`` then
        drives to the request's answer, or the intent it settled at once, answered in that transaction."""
        route = f"/v1/payment_intents/{intent_id}/{action}"
        fingerprint = request_fingerprint("POST", route, body.model_dump(mode="json"))

        async def create(conn: AsyncConnection[Any]) -> Charge | Intent | None:
            async with conn.transaction():
                claimed = await charges_db.claim_key_for(
                    conn, merchant_id, key, fingerprint, intent_id, self._requests.lease_ms
                )
                if not claimed:
                    return None
                intent = await store.lock_intent(conn, intent_id, merchant_id)
                if intent is None:
                    raise no_such_intent(intent_id)
                made = await act(conn, intent, fingerprint)
                if isinstance(made, Intent):
                    await charges_db.store_answer(conn, merchant_id, key, *answer_for(made))
                return made

        async def start(made: Charge | Intent) -> tuple[int, bytes]:
            if isinstance(made, Intent):
                return answer_for(made)
            return await self._answer(merchant_id, key, await drive(made))

        operation: Operation[Any] = Operation(create, start, self._resumer(merchant_id, key))
        return await self._requests.run(merchant_id, key, fingerprint, operation)

    async def _begin(
        self, conn: AsyncConnection[Any], charge: Charge, event: ChargeEvent, fields: dict[str, Any]
    ) -> Charge:
        """The capture or cancel of the intent's charge, persisted in the request's transaction."""
        begun = await self._flow.begin(charge, event, fields, conn)
        assert begun is not None, "the charge is locked by this transaction"
        return begun

    @staticmethod
    async def _locked_charge(conn: AsyncConnection[Any], intent: Intent) -> Charge:
        assert intent.charge_id is not None, "an authorized intent has its charge"
        charge = await charges_db.lock_merchant_charge(conn, intent.charge_id, intent.merchant_id)
        assert charge is not None, "an intent's charge is its merchant's"
        return charge

    def _resumer(self, merchant_id: str, key: str) -> Any:
        """``Operation.resume``: finish, by the intent's id, what an earlier request with the key began (its
        charge recovered, if unfinished), and answer with the intent as that leaves it."""

        async def resume(intent_id: str) -> tuple[int, bytes]:
            async with self._pool.connection() as conn:
                intent = await store.load_intent(conn, intent_id, merchant_id)
                charge = None
                if intent is not None and intent.charge_id is not None:
                    charge = await charges_db.load_charge(conn, intent.charge_id)
            if intent is None:
                raise no_such_intent(intent_id)
            if charge is None:
                return answer_for(intent)
            return await self._answer(merchant_id, key, await self._flow.recover(charge))

        return resume

    async def _answer(self, merchant_id: str, key: str, reply: Reply) -> tuple[int, bytes]:
        """The request's answer once the charge's drive ended: the intent as it left it, stored under the
        key (a pending one is never replayed: a retry takes the key over and asks again)."""
        charge = reply.charge
        assert charge.payment_intent_id is not None
        async with self._pool.connection() as conn:
            intent = await store.load_intent(conn, charge.payment_intent_id, merchant_id)
            assert intent is not None
            status, body = answer_for(intent)
            await charges_db.store_answer(conn, merchant_id, key, status, body)
        return status, body
