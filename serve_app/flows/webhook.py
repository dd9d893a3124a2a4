"""``POST /v1/webhooks/psp``: the PSP's events, verified, applied exactly once and in any order.

Verification is the Stripe SDK's own (``Stripe-Signature``, HMAC-SHA256 of ``"{t}.{body}"``, 300 s tolerance,
any ``v1`` signature of any configured secret, so a secret can be rotated). An event is applied in one
database transaction that also records its id: a redelivery finds the id and changes nothing, and a crash
before the commit leaves nothing applied, so the PSP's retry applies it. What must follow outside the
database (a ledger posting through the merchant's wallet) runs after the commit from the state the
transaction left, which the flows (and recovery) resume from.

Order does not matter: a ``charge.succeeded`` for a charge already settled changes nothing (and when this
replica drove that charge, it says so without a database transaction: ``serve_app/flows/recent.py``); a
``charge.refunded`` carrying a refund payray never made creates it; a ``charge.dispute.closed`` seen before
its ``charge.dispute.created`` opens and closes the dispute at once. An event about a charge or refund whose
own request is still waiting for the PSP is answered 409 and left unrecorded: the PSP delivers it again.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import stripe
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.charge import ChargeState
from payray.errors import ClientError, PayrayError
from payray.fees import RefundRefused, refund_terms
from payray.ids import new_id
from payray.refund import RefundState
from psp.port import PaymentServiceProvider
from psp.stripe_adapter import PAYMENT_ID_KEY
from serve_app.flows import dispute as disputes
from serve_app.flows.charge import ChargeFlow
from serve_app.flows.dispute import DisputeBooking
from serve_app.flows.late_success import LateSuccesses, is_late
from serve_app.flows.refund import RefundFlow
from serve_app.stores import charges, refunds
from serve_app.stores import webhooks as events
from serve_app.wire.events import parse_event

log = logging.getLogger("payray.webhooks")

TOLERANCE_S = 300


class InvalidSignature(ClientError):
    code = "signature_invalid"


class NotYet(PayrayError):
    """The event concerns an operation whose own request is still waiting for the PSP's answer: apply it
    later (nothing is recorded; the PSP redelivers with backoff, by which time that request has finished or
    given up and left the operation waiting for exactly this news)."""

    status = 409
    type = "api_error"
    code = "webhook_not_ready"


#: What an applied event leaves to run after its transaction commits.
FollowUp = Callable[[], Awaitable[object]]


def verify(payload: bytes, header: str | None, secrets: tuple[str, ...]) -> dict[str, Any]:
    """The event, if ``header`` signs ``payload`` with one of ``secrets`` recently enough, checked for its
    type (``serve_app.wire.events``); else raise."""
    if not header:
        raise InvalidSignature("Missing Stripe-Signature header.")
    if not secrets:
        raise InvalidSignature("No webhook signing secret is configured.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("The payload is not UTF-8.") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, TOLERANCE_S)
        except stripe.SignatureVerificationError:
            continue
        try:
            event = json.loads(text)
        except ValueError:
            raise InvalidSignature("The signed payload is not JSON.") from None
        return parse_event(event)
    raise InvalidSignature("No signature matches a configured secret within the tolerance.")


class WebhookReceiver:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        psp: PaymentServiceProvider,
        charges: ChargeFlow,
        refund_flow: RefundFlow,
        booking: DisputeBooking,
        secrets: tuple[str, ...],
        late: LateSuccesses,
    ) -> None:
        self._pool = pool
        self._late = late
        self._psp = psp
        self._charges = charges
        self._refunds = refund_flow
        self._booking = booking
        self._secrets = secrets

    async def receive(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        event = verify(payload, signature, self._secrets)
        obj: dict[str, Any] = event["data"]["object"]
        if event["type"] in ("charge.succeeded", "charge.failed"):
            payment_id = (obj.get("metadata") or {}).get(PAYMENT_ID_KEY)
            if isinstance(payment_id, str) and await self._charges.outcomes.past_psp(payment_id):
                effect = f"no change: {payment_id} is past the PSP"
                return {"received": True, "id": event["id"], "effect": effect}
        # what the PSP knows beyond the event (a charge's refunds) is read before the transaction opens
        psp_refunds = None
        if event["type"] == "charge.refunded" and await self._refunds_unsettled(obj):
            psp_refunds = await self._psp.refunds_for(psp_reference=str(obj["payment_intent"]))
        async with self._pool.connection() as conn, conn.transaction():
            # a concurrent delivery of the same event waits here for ours to commit, then finds it
            if not await events.record_event(conn, event["id"], event["type"], obj.get("id"), "applying"):
                return {"received": True, "id": event["id"], "effect": "duplicate: already applied"}
            effect, follow_ups = await self._apply(conn, event["type"], obj, psp_refunds)
            await events.set_effect(conn, event["id"], effect)
        for follow_up in follow_ups:
            try:
                await follow_up()
            except Exception:  # recorded and resumable: recovery (or the client's retry) finishes it
                log.warning("webhook follow-up failed", exc_info=True, extra={"event_id": event["id"]})
        log.info("webhook applied", extra={"event_id": event["id"], "type": event["type"], "effect": effect})
        return {"received": True, "id": event["id"], "effect": effect}

    async def _refunds_unsettled(self, charge: dict[str, Any]) -> bool:
        """Whether the PSP's refunds of ``charge`` may hold news for us: a refund we do not know of yet (it
        reports more refunded than our refunds it confirmed) or one whose outcome we are waiting for. Most
        ``charge.refunded`` events follow our own refunds and need no question to the PSP."""
        if not charge.get("payment_intent"):
            return False
        async with self._pool.connection() as conn:
            payment = await self._payment(conn, charge)
            if payment is None or is_late(payment, "stripe"):
                return False
            confirmed, waiting = await refunds.refunds_confirmed(conn, payment.id)
        return waiting or int(charge.get("amount_refunded") or 0) != confirmed

    async def _apply(
        self, conn: AsyncConnection[Any], type_: str, obj: dict[str, Any], psp_refunds: Any
    ) -> tuple[str, list[FollowUp]]:
        if type_ in ("charge.succeeded", "charge.failed"):
            return await self._charge_outcome(conn, type_, obj)
        if type_ == "charge.refunded":
            return await self._charge_refunded(conn, obj, psp_refunds or [])
        if type_ in ("charge.dispute.created", "charge.dispute.closed"):
            return await self._dispute(conn, type_, obj)
        return f"ignored: {type_} is not handled", []

    async def _payment(self, conn: AsyncConnection[Any], obj: dict[str, Any]) -> charges.Charge | None:
        payment_id = (obj.get("metadata") or {}).get(PAYMENT_ID_KEY)
        if not payment_id and obj.get("payment_intent"):
            payment_id = await charges.charge_id_for_psp_reference(conn, str(obj["payment_intent"]))
        if not payment_id:
            return None
        return await charges.load_charge(conn, str(payment_id))

    async def _charge_outcome(
        self, conn: AsyncConnection[Any], type_: str, obj: dict[str, Any]
    ) -> tuple[str, list[FollowUp]]:
        payment = await self._payment(conn, obj)
        if payment is None:
            return "ignored: not a payray charge", []
        if type_ == "charge.succeeded" and is_late(payment, "stripe"):
            late = await self._late.record(
                conn,
                payment,
                "stripe",
                psp_reference=str(obj.get("payment_intent") or obj["id"]),
                amount=int(obj.get("amount_captured") or obj["amount"]),
                currency=str(obj["currency"]),
                found_as="captured" if obj.get("captured", True) else "authorized",
                found_by="webhook",
            )
            return f"{late.id}: late success of {payment.id} at stripe", [lambda: self._late.reverse(late)]
        if payment.psp != "stripe":  # news of an attempt it left: only its current PSP's word counts
            return f"no change: {payment.id} is at {payment.psp} now", []
        if payment.state == ChargeState.PSP_PENDING:
            raise NotYet(f"{payment.id} is still waiting for the PSP's answer; deliver again later.")
        if payment.state != ChargeState.UNKNOWN:
            return f"no change: {payment.id} is {payment.state}", []
        succeeded = type_ == "charge.succeeded"
        fields: dict[str, Any] = {"psp_reference": obj.get("payment_intent")}
        if not succeeded:
            fields.update(failure_code=obj.get("failure_code"), failure_message=obj.get("failure_message"))
        # an uncaptured charge (capture_method=manual) succeeded as an authorization
        outcome = ("captured" if obj.get("captured", True) else "authorized") if succeeded else "declined"
        persisted = await self._charges.apply_psp_outcome(conn, payment, outcome, fields)
        if persisted is None:
            return f"no change: {payment.id} is {payment.state}", []
        return f"{payment.id} {payment.state} -> {persisted.chain[-1].target.value}", [
            lambda: self._charges.finish(persisted)
        ]

    async def _charge_refunded(
        self, conn: AsyncConnection[Any], obj: dict[str, Any], psp_refunds: list[Any]
    ) -> tuple[str, list[FollowUp]]:
        payment = await self._payment(conn, obj)
        if payment is None:
            return "ignored: not a payray charge", []
        if is_late(payment, "stripe"):
            return f"no change: the refund of a late success of {payment.id}, booked with it", []
        await charges.lock_charge(conn, payment.id)  # one refund bookkeeper per charge at a time
        effects: list[str] = []
        follow_ups: list[FollowUp] = []
        for psp_refund in psp_refunds:
            if psp_refund.status not in ("succeeded", "pending"):
                continue
            if psp_refund.refund_id:  # ours: the PSP's word settles it, if we were left not knowing
                refund = await refunds.load_refund(conn, psp_refund.refund_id)
                if refund is not None and refund.state == RefundState.FUNDS_HELD:
                    raise NotYet(f"{refund.id} is still waiting for the PSP's answer; deliver again later.")
                if refund is None or refund.state != RefundState.PSP_UNKNOWN:
                    continue
                if await self._refunds.apply_psp_refunded(conn, refund, psp_refund.psp_reference):
                    effects.append(f"{refund.id} psp_unknown -> succeeded")
                continue
            if payment.state != ChargeState.SUCCEEDED:  # a compensating refund of a charge that failed
                continue
            payment = await charges.load_charge(conn, payment.id) or payment  # refunded amount so far
            learned = await self._learn_refund(conn, payment, psp_refund)
            if learned is not None:
                effects.append(f"{learned} learned from the PSP")
                follow_ups.append(functools.partial(self._resume_refund, learned))
        return ("; ".join(effects) or "no change"), follow_ups

    async def _learn_refund(
        self, conn: AsyncConnection[Any], payment: charges.Charge, psp_refund: Any
    ) -> str | None:
        refund_id = new_id("re")
        try:
            terms = refund_terms(
                payment.captured_amount,
                payment.fee,
                payment.amount_refunded,
                int(psp_refund.amount),
                capped=True,
            )
        except RefundRefused:  # nothing left, or nothing refunded
            log.error("the PSP refunded more than payray reserved", extra={"payment_id": payment.id})
            return None
        return await refunds.learn_refund(
            conn,
            refund_id,
            payment.id,
            terms.amount.amount,
            terms.fee_returned.amount,
            psp_refund.psp_reference,
        )

    async def _resume_refund(self, refund_id: str) -> None:
        async with self._pool.connection() as conn:
            refund = await refunds.load_refund(conn, refund_id)
        if refund is not None and refund.state == RefundState.BOOKING:
            await self._refunds.resume(refund)

    async def _dispute(
        self, conn: AsyncConnection[Any], type_: str, obj: dict[str, Any]
    ) -> tuple[str, list[FollowUp]]:
        payment = await self._payment(conn, obj)
        if payment is None:
            return "ignored: not a payray charge", []
        if type_ == "charge.dispute.created":
            dispute = await disputes.record_opened(conn, payment.id, obj)
        else:
            outcome = obj.get("status")
            if outcome not in ("won", "lost"):
                return f"ignored: dispute closed as {outcome}", []
            dispute = await disputes.record_closed(conn, payment.id, obj, outcome)
        if dispute is None:
            return "no change: dispute already known", []
        return f"{dispute.id} {dispute.status}", [lambda: self._booking.book(dispute)]
