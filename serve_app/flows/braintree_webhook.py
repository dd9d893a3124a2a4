"""``POST /v1/webhooks/braintree``: Braintree's notifications, verified, applied exactly once.

Verification is the ``braintree`` SDK's own (``bt_signature`` over ``bt_payload`` with the merchant's key
pair). A notification carries no id of its own, so its payload's digest is its id: a redelivery finds it
recorded and changes nothing. As with Stripe's events, it is applied in one transaction that records it, and
what must follow in the ledger runs after the commit.

- ``transaction_settled`` for a payment waiting on Braintree's word books its capture; for a payment that had
  left Braintree (``late_success``) it is a late success, given back at Braintree and booked both ways.
- ``transaction_settlement_declined`` is logged; reconciliation files the settlement that did not come.
- ``dispute_opened`` opens the payment's dispute and books its hold, as Stripe's ``charge.dispute.created``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.charge import ChargeState
from payray.errors import ClientError
from psp.braintree.adapter import BraintreePsp
from psp.braintree.mapping import BraintreeNotification, InvalidWebhook
from serve_app.flows import dispute as disputes
from serve_app.flows.charge import ChargeFlow
from serve_app.flows.dispute import DisputeBooking
from serve_app.flows.late_success import LateSuccesses, is_late
from serve_app.flows.webhook import NotYet
from serve_app.stores import charges
from serve_app.stores import webhooks as events

log = logging.getLogger("payray.webhooks.braintree")

FollowUp = Callable[[], Awaitable[object]]


class InvalidNotification(ClientError):
    code = "signature_invalid"


def notification_id(payload: str) -> str:
    """The id a notification is recorded under: its payload's digest (Braintree gives it none)."""
    return "btn_" + hashlib.sha256(payload.encode()).hexdigest()[:40]


class BraintreeWebhookReceiver:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        braintree: BraintreePsp | None,
        charges_flow: ChargeFlow,
        late: LateSuccesses,
        booking: DisputeBooking,
    ) -> None:
        self._pool = pool
        self._braintree = braintree
        self._charges = charges_flow
        self._late = late
        self._booking = booking

    async def receive(self, signature: str | None, payload: str | None) -> dict[str, Any]:
        if self._braintree is None:
            raise InvalidNotification("Braintree is not set up on this service.")
        if not signature or not payload:
            raise InvalidNotification("A Braintree notification is a form of bt_signature and bt_payload.")
        try:
            notification = self._braintree.parse_webhook(signature, payload)
        except InvalidWebhook as exc:
            raise InvalidNotification(f"The notification does not verify: {exc}") from None
        event_id = notification_id(payload)
        subject = notification.dispute_id or notification.transaction_id
        async with self._pool.connection() as conn, conn.transaction():
            if not await events.record_event(conn, event_id, notification.kind, subject, "applying"):
                return {"received": True, "id": event_id, "effect": "duplicate: already applied"}
            effect, follow_ups = await self._apply(conn, notification)
            await events.set_effect(conn, event_id, effect)
        for follow_up in follow_ups:
            try:
                await follow_up()
            except Exception:  # recorded and resumable: recovery finishes it
                log.warning("webhook follow-up failed", exc_info=True, extra={"event_id": event_id})
        log.info("webhook applied", extra={"event_id": event_id, "type": notification.kind, "effect": effect})
        return {"received": True, "id": event_id, "effect": effect}

    async def _apply(
        self, conn: AsyncConnection[Any], notification: BraintreeNotification
    ) -> tuple[str, list[FollowUp]]:
        payment = await charges.load_charge(conn, notification.order_id) if notification.order_id else None
        if payment is None:
            return "ignored: not a payray payment", []
        if notification.kind == "transaction_settled":
            return await self._settled(conn, payment, notification)
        if notification.kind == "transaction_settlement_declined":
            log.error("Braintree declined a settlement", extra={"payment_id": payment.id})
            return f"noted: the settlement of {payment.id} was declined; reconciliation files it", []
        if notification.kind == "dispute_opened" and notification.dispute_id and notification.amount:
            return await self._dispute_opened(conn, payment, notification)
        return f"ignored: {notification.kind} is not handled", []

    async def _settled(
        self, conn: AsyncConnection[Any], payment: charges.Charge, notification: BraintreeNotification
    ) -> tuple[str, list[FollowUp]]:
        assert notification.transaction_id is not None
        if is_late(payment, "braintree"):
            late = await self._late.record(
                conn,
                payment,
                "braintree",
                psp_reference=notification.transaction_id,
                amount=notification.amount or payment.amount.amount,
                currency=notification.currency or payment.currency,
                found_as="captured",
                found_by="webhook",
            )
            return f"{late.id}: late success of {payment.id} at braintree", [lambda: self._late.reverse(late)]
        if payment.state == ChargeState.PSP_PENDING:
            raise NotYet(f"{payment.id} is still waiting for the PSP's answer; deliver again later.")
        if payment.state != ChargeState.UNKNOWN:
            return f"no change: {payment.id} is {payment.state}", []
        fields = {"psp_reference": notification.transaction_id}
        persisted = await self._charges.apply_psp_outcome(conn, payment, "captured", fields)
        if persisted is None:
            return f"no change: {payment.id} is {payment.state}", []
        return f"{payment.id} {payment.state} -> {persisted.chain[-1].target.value}", [
            lambda: self._charges.finish(persisted)
        ]

    async def _dispute_opened(
        self, conn: AsyncConnection[Any], payment: charges.Charge, notification: BraintreeNotification
    ) -> tuple[str, list[FollowUp]]:
        psp_dispute = {
            "id": notification.dispute_id,
            "amount": notification.amount,
            "currency": notification.currency or payment.currency,
            "reason": notification.dispute_reason,
        }
        dispute = await disputes.record_opened(conn, payment.id, psp_dispute)
        if dispute is None:
            return "no change: dispute already known", []
        return f"{dispute.id} {dispute.status}", [lambda: self._booking.book(dispute)]
