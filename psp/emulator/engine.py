"""Stripe's object lifecycle (customers, payment methods, PaymentIntents, charges, refunds, balance, events).

Synchronous on purpose: the server runs one event loop, so each operation is atomic with respect to every
other request, which is what makes idempotency and the over-refund check race-free without locks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psp.emulator import params as p
from psp.emulator.balance import available_on, processing_fee
from psp.emulator.cards import (
    DECLINES,
    GENERIC_DECLINE,
    CardProfile,
    Decline,
    profile_for_number,
    profile_for_token,
)
from psp.emulator.clock import Clock
from psp.emulator.errors import StripeError, invalid, missing, no_such, unexpected_state
from psp.emulator.ids import new_id
from psp.emulator.store import Obj, Store

API_VERSION = "2026-10-28.endive"
PREFIXES: dict[str, str] = {
    "pi": "payment_intent",
    "ch": "charge",
    "re": "refund",
    "txn": "balance_transaction",
    "cus": "customer",
    "pm": "payment_method",
    "evt": "event",
    "dp": "dispute",
}
CANCELABLE = frozenset(
    {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action"}
)
CONFIRMABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action"})
PI_CREATE_PARAMS = (
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "capture_method",
    "metadata",
    "description",
    "payment_method_types",
    "automatic_payment_methods",
    "return_url",
    "off_session",
    "setup_future_usage",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "receipt_email",
    "payment_method_options",
    "error_on_requires_action",
    "confirmation_method",
    "use_stripe_sdk",
    "mandate_data",
    "shipping",
)
PI_UPDATE_PARAMS = (
    "amount",
    "currency",
    "customer",
    "payment_method",
    "metadata",
    "description",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "capture_method",
)
PI_CONFIRM_PARAMS = (
    "payment_method",
    "return_url",
    "off_session",
    "capture_method",
    "receipt_email",
    "payment_method_options",
    "error_on_requires_action",
    "use_stripe_sdk",
    "mandate_data",
)

EventListener = Callable[[Obj], None]


@dataclass
class RequestContext:
    """Who asked: recorded on events; ``decide_decline`` lets the fault injector force a decline."""

    request_id: str | None = None
    idempotency_key: str | None = None
    decide_decline: Callable[[str], str | None] = field(default=lambda _obj_id: None)


def public(obj: Obj) -> Obj:
    """The wire form of a stored object: internal ``_`` fields stripped."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


class Engine:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._listeners: list[EventListener] = []

    def subscribe(self, listener: EventListener) -> None:
        """Called with each new event (after it is stored): the hook for webhook delivery."""
        self._listeners.append(listener)

    # -- rendering ------

    def render(self, kind: str, obj: Obj, expand: list[str] | None = None) -> Obj:
        out = public(obj)
        if kind == "balance_transaction":
            out["status"] = "available" if self.clock.now() >= out["available_on"] else "pending"
        for path in expand or []:
            self._expand(out, path.split("."))
        return out

    def _expand(self, obj: Obj, path: list[str]) -> None:
        head, rest = path[0], path[1:]
        value = obj.get(head)
        if isinstance(value, str):
            kind = PREFIXES.get(value.split("_", 1)[0])
            if kind is None:
                return
            found = self._find(kind, value)
            if found is None:
                return
            value = obj[head] = self.render(kind, found)
        if rest and isinstance(value, dict):
            self._expand(value, rest)
        elif rest and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    self._expand(item, rest)

    def _find(self, kind: str, obj_id: str) -> Obj | None:
        if kind == "payment_method":
            return self._payment_method(obj_id)
        return self.store.get(kind, obj_id)

    def retrieve(self, kind: str, obj_id: str, expand: list[str]) -> Obj:
        found = self._find(kind, obj_id)
        if found is None:
            raise no_such(kind, obj_id)
        return self.render(kind, found, expand)

    # -- customers and payment methods ------

    def create_customer(self, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, ("email", "name", "description", "metadata", "phone", "payment_method"))
        customer = {
            "id": new_id("cus", 14),
            "object": "customer",
            "created": self.clock.now(),
            "email": p.opt_str(params, "email"),
            "name": p.opt_str(params, "name"),
            "description": p.opt_str(params, "description"),
            "phone": p.opt_str(params, "phone"),
            "metadata": p.metadata(params),
            "livemode": False,
        }
        self.store.put("customer", customer)
        self._emit("customer.created", "customer", customer, ctx)
        return customer

    def create_payment_method(self, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, ("type", "card", "billing_details", "metadata", "customer"))
        if p.choice(params, "type", ("card",), None) is None:
            raise missing("type")
        card = params.get("card")
        if not isinstance(card, dict):
            raise missing("card") if card is None else invalid("Invalid card: must be a hash", param="card")
        profile: CardProfile | None
        if "token" in card:
            profile = profile_for_token(str(card["token"]))
            if profile is None:
                raise no_such("token", str(card["token"]), param="card[token]")
        else:
            number = p.req_str(card, "number")
            profile = profile_for_number(number)
            if profile is None:
                raise p.card_error("Your card number is incorrect.", "incorrect_number", "card[number]")
        exp_month = p.opt_int(card, "exp_month") or profile.exp_month
        exp_year = p.opt_int(card, "exp_year") or profile.exp_year
        pm = self._pm_object(new_id("pm", 24), profile, exp_month, exp_year)
        pm["metadata"] = p.metadata(params)
        pm["customer"] = p.opt_str(params, "customer")
        self.store.put("payment_method", pm)
        return pm

    def _pm_object(self, pm_id: str, profile: CardProfile, exp_month: int, exp_year: int) -> Obj:
        return {
            "id": pm_id,
            "object": "payment_method",
            "type": "card",
            "created": self.clock.now(),
            "customer": None,
            "metadata": {},
            "livemode": False,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": {
                "brand": profile.brand,
                "last4": profile.last4,
                "exp_month": exp_month,
                "exp_year": exp_year,
                "funding": profile.funding,
                "country": profile.country,
                "checks": {
                    "cvc_check": "pass",
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                },
            },
            "_decline": profile.decline.decline_code if profile.decline else None,
            "_requires_action": profile.requires_action,
        }

    def _payment_method(self, pm_id: str) -> Obj | None:
        """Stored payment methods, and Stripe's test tokens (``pm_card_visa``) synthesized on demand."""
        stored = self.store.get("payment_method", pm_id)
        if stored is not None:
            return stored
        profile = profile_for_token(pm_id)
        if profile is None:
            return None
        return self._pm_object(pm_id, profile, profile.exp_month, profile.exp_year)

    # -- payment intents ------

    def create_payment_intent(self, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, PI_CREATE_PARAMS)
        amount = p.amount(params, "amount", required=True)
        assert amount is not None
        currency = p.currency(params)
        customer = self._customer_param(params)
        pm_id = self._pm_param(params)
        capture_method = p.choice(
            params, "capture_method", ("automatic", "automatic_async", "manual"), "automatic"
        )
        confirm = p.opt_bool(params, "confirm")
        pi_id = new_id("pi", 24)
        intent: Obj = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{pi_id}_secret_{new_id('s', 20)[2:]}",
            "confirmation_method": "automatic",
            "created": self.clock.now(),
            "currency": currency,
            "customer": customer,
            "description": p.opt_str(params, "description"),
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": p.metadata(params),
            "next_action": None,
            "payment_method": pm_id,
            "payment_method_types": ["card"],
            "receipt_email": p.opt_str(params, "receipt_email"),
            "status": "requires_confirmation" if pm_id else "requires_payment_method",
            "_idempotency_key": ctx.idempotency_key,
        }
        self.store.put("payment_intent", intent)
        self._emit("payment_intent.created", "payment_intent", intent, ctx)
        if confirm:
            return self._confirm(intent, ctx)
        return intent

    def update_payment_intent(self, pi_id: str, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, PI_UPDATE_PARAMS)
        intent = self._intent(pi_id)
        if intent["status"] in ("succeeded", "canceled", "processing"):
            editable = {"metadata", "description", "receipt_email"}
            if set(params) - editable - {"expand"}:
                raise unexpected_state(
                    f"You cannot update this PaymentIntent because it has a status of {intent['status']}."
                )
        updated = dict(intent)
        updated["metadata"] = p.metadata(params, intent["metadata"])
        for name in ("description", "receipt_email"):
            if name in params:
                updated[name] = p.opt_str(params, name)
        if "amount" in params:
            updated["amount"] = p.amount(params, "amount", required=True)
        if "currency" in params:
            updated["currency"] = p.currency(params)
        if "customer" in params:
            updated["customer"] = self._customer_param(params)
        if "capture_method" in params:
            updated["capture_method"] = p.choice(
                params, "capture_method", ("automatic", "automatic_async", "manual"), intent["capture_method"]
            )
        if "payment_method" in params:
            updated["payment_method"] = self._pm_param(params)
            if intent["status"] == "requires_payment_method" and updated["payment_method"]:
                updated["status"] = "requires_confirmation"
        self.store.put("payment_intent", updated)
        return updated

    def confirm_payment_intent(self, pi_id: str, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, PI_CONFIRM_PARAMS)
        intent = self._intent(pi_id)
        if intent["status"] not in CONFIRMABLE:
            raise unexpected_state(
                f"This PaymentIntent's status is {intent['status']}, but it must be one of "
                "requires_payment_method, requires_confirmation or requires_action to be confirmed."
            )
        pm_id = self._pm_param(params)
        if pm_id or "capture_method" in params:
            intent = dict(intent)
            if pm_id:
                intent["payment_method"] = pm_id
            intent["capture_method"] = p.choice(
                params, "capture_method", ("automatic", "automatic_async", "manual"), intent["capture_method"]
            )
            self.store.put("payment_intent", intent)
        return self._confirm(intent, ctx)

    def _confirm(self, intent: Obj, ctx: RequestContext) -> Obj:
        pm_id = intent.get("payment_method")
        if not pm_id:
            raise unexpected_state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. "
                "Update the PaymentIntent with a payment method and then confirm it again."
            )
        pm = self._payment_method(pm_id)
        assert pm is not None
        decline = DECLINES.get(pm["_decline"], GENERIC_DECLINE) if pm["_decline"] else None
        forced = ctx.decide_decline(intent["id"])
        if forced is not None:
            decline = DECLINES.get(forced, GENERIC_DECLINE)
        now = self.clock.now()
        intent = dict(intent)
        if decline is None and pm["_requires_action"] and intent["status"] != "requires_action":
            intent.update(
                status="requires_action", next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            )
            self.store.put("payment_intent", intent)
            self._emit("payment_intent.requires_action", "payment_intent", intent, ctx)
            return intent
        charge = self._charge_object(intent, pm, now)
        intent["latest_charge"] = charge["id"]
        intent["next_action"] = None
        if decline is not None:
            return self._decline(intent, charge, pm, decline, ctx)
        intent["last_payment_error"] = None
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=intent["amount"])
            self.store.put("payment_intent", intent)
            self.store.put("charge", charge)
            self._emit("charge.succeeded", "charge", charge, ctx)
            self._emit("payment_intent.amount_capturable_updated", "payment_intent", intent, ctx)
            return intent
        charge = self._capture_charge(charge, intent["amount"], now)
        intent.update(status="succeeded", amount_received=intent["amount"], amount_capturable=0)
        self.store.put("payment_intent", intent)
        self.store.put("charge", charge)
        self._emit("charge.succeeded", "charge", charge, ctx)
        self._emit("payment_intent.succeeded", "payment_intent", intent, ctx)
        return intent

    def _decline(self, intent: Obj, charge: Obj, pm: Obj, decline: Decline, ctx: RequestContext) -> Obj:
        charge.update(
            status="failed",
            paid=False,
            failure_code=decline.code,
            failure_message=decline.message,
            outcome={
                "network_status": "declined_by_network",
                "reason": decline.decline_code,
                "risk_level": "normal",
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            },
        )
        error = {
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
            "charge": charge["id"],
            "payment_method": public(pm),
        }
        intent.update(status="requires_payment_method", last_payment_error=error, payment_method=None)
        self.store.put("payment_intent", intent)
        self.store.put("charge", charge)
        self._emit("charge.failed", "charge", charge, ctx)
        self._emit("payment_intent.payment_failed", "payment_intent", intent, ctx)
        raise StripeError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            decline_code=decline.decline_code,
            charge=charge["id"],
            payment_intent=public(intent),
            payment_method=public(pm),
        )

    def capture_payment_intent(self, pi_id: str, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, ("amount_to_capture", "metadata", "statement_descriptor", "final_capture"))
        intent = self._intent(pi_id)
        if intent["status"] != "requires_capture":
            raise unexpected_state(
                f"This PaymentIntent could not be captured because it has a status of {intent['status']}. "
                "Only a PaymentIntent with one of the following statuses may be captured: requires_capture."
            )
        to_capture = p.amount(params, "amount_to_capture", required=False) or intent["amount_capturable"]
        if to_capture > intent["amount_capturable"]:
            raise invalid(
                "The amount to capture must be less than or equal to the amount capturable.",
                param="amount_to_capture",
                code="amount_too_large",
            )
        charge = self.store.get("charge", intent["latest_charge"])
        assert charge is not None
        charge = self._capture_charge(dict(charge), to_capture, self.clock.now())
        charge["amount_refunded"] = charge["amount"] - to_capture
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        intent = dict(intent)
        intent.update(
            status="succeeded",
            amount_received=to_capture,
            amount_capturable=0,
            metadata=p.metadata(params, intent["metadata"]),
        )
        self.store.put("charge", charge)
        self.store.put("payment_intent", intent)
        self._emit("charge.captured", "charge", charge, ctx)
        self._emit("payment_intent.succeeded", "payment_intent", intent, ctx)
        return intent

    def cancel_payment_intent(self, pi_id: str, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(params, ("cancellation_reason",))
        reason = p.choice(
            params,
            "cancellation_reason",
            ("duplicate", "fraudulent", "requested_by_customer", "abandoned"),
            None,
        )
        intent = self._intent(pi_id)
        if intent["status"] not in CANCELABLE:
            raise unexpected_state(
                f"You cannot cancel this PaymentIntent because it has a status of {intent['status']}. "
                "Only a PaymentIntent with one of the following statuses may be canceled: "
                + ", ".join(sorted(CANCELABLE))
                + "."
            )
        if intent["status"] == "requires_capture":
            charge = dict(self.store.get("charge", intent["latest_charge"]) or {})
            charge.update(amount_refunded=charge["amount"], refunded=True)
            self.store.put("charge", charge)
        intent = dict(intent)
        intent.update(
            status="canceled", canceled_at=self.clock.now(), cancellation_reason=reason, amount_capturable=0
        )
        self.store.put("payment_intent", intent)
        self._emit("payment_intent.canceled", "payment_intent", intent, ctx)
        return intent

    def _intent(self, pi_id: str) -> Obj:
        intent = self.store.get("payment_intent", pi_id)
        if intent is None:
            raise no_such("payment_intent", pi_id, param="intent")
        return intent

    def _customer_param(self, params: dict[str, Any]) -> str | None:
        customer = p.opt_str(params, "customer")
        if customer is not None and self.store.get("customer", customer) is None:
            raise no_such("customer", customer, param="customer")
        return customer

    def _pm_param(self, params: dict[str, Any]) -> str | None:
        pm_id = p.opt_str(params, "payment_method")
        if pm_id is not None and self._payment_method(pm_id) is None:
            raise no_such("PaymentMethod", pm_id, param="payment_method")
        return pm_id

    # -- charges and the balance ------

    def _charge_object(self, intent: Obj, pm: Obj, now: int) -> Obj:
        return {
            "id": new_id("ch", 24),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": 0,
            "amount_refunded": 0,
            "balance_transaction": None,
            "captured": False,
            "created": now,
            "currency": intent["currency"],
            "customer": intent["customer"],
            "description": intent["description"],
            "failure_code": None,
            "failure_message": None,
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "outcome": {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": True,
            "payment_intent": intent["id"],
            "payment_method": pm["id"],
            "payment_method_details": {"type": "card", "card": dict(pm["card"])},
            "receipt_email": intent.get("receipt_email"),
            "refunded": False,
            "status": "succeeded",
        }

    def _capture_charge(self, charge: Obj, amount: int, now: int) -> Obj:
        fee = processing_fee(amount, charge["currency"])
        txn = self._balance_transaction(
            amount=amount, fee=fee, currency=charge["currency"], source=charge["id"], type_="charge", now=now
        )
        charge.update(captured=True, amount_captured=amount, balance_transaction=txn["id"])
        return charge

    def _balance_transaction(
        self,
        *,
        amount: int,
        fee: int,
        currency: str,
        source: str,
        type_: str,
        now: int,
        reporting_category: str | None = None,
        description: str | None = None,
    ) -> Obj:
        """``reporting_category`` defaults to ``type_``; they differ for adjustments such as disputes."""
        txn: Obj = {
            "id": new_id("txn", 24),
            "object": "balance_transaction",
            "amount": amount,
            "available_on": available_on(now),
            "created": now,
            "currency": currency,
            "description": description,
            "exchange_rate": None,
            "fee": fee,
            "fee_details": (
                [
                    {
                        "amount": fee,
                        "application": None,
                        "currency": currency,
                        "description": "Stripe processing fees",
                        "type": "stripe_fee",
                    }
                ]
                if fee
                else []
            ),
            "net": amount - fee,
            "reporting_category": reporting_category or type_,
            "source": source,
            "status": "pending",
            "type": type_,
        }
        self.store.put("balance_transaction", txn)
        return txn

    # -- refunds ------

    def create_refund(self, params: dict[str, Any], ctx: RequestContext) -> Obj:
        p.reject_unknown(
            params, ("payment_intent", "charge", "amount", "reason", "metadata", "instructions_email")
        )
        charge = self._refundable_charge(params)
        reason = p.choice(params, "reason", ("duplicate", "fraudulent", "requested_by_customer"), None)
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
                charge=charge["id"],
            )
        amount = p.amount(params, "amount", required=False) or remaining
        if amount > remaining:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                code="amount_too_large",
                param="amount",
                charge=charge["id"],
            )
        if ctx.decide_decline(charge["id"]) is not None:  # a fault: the PSP refuses this refund
            raise StripeError(
                400,
                "invalid_request_error",
                f"The refund of charge {charge['id']} was declined.",
                code="refund_declined",
                charge=charge["id"],
            )
        now = self.clock.now()
        refund_id = new_id("re", 24)
        txn = self._balance_transaction(
            amount=-amount, fee=0, currency=charge["currency"], source=refund_id, type_="refund", now=now
        )
        refund = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": txn["id"],
            "charge": charge["id"],
            "created": now,
            "currency": charge["currency"],
            "metadata": p.metadata(params),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "status": "succeeded",
        }
        charge = dict(charge)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.store.put("refund", refund)
        self.store.put("charge", charge)
        self._emit("refund.created", "refund", refund, ctx)
        self._emit("charge.refunded", "charge", charge, ctx)
        return refund

    # -- disputes (opened and closed by the control routes: a cardholder and a bank, not an API client) ------

    def open_dispute(self, params: dict[str, Any], ctx: RequestContext) -> Obj:
        """A cardholder disputes a captured charge: ``payment_intent`` or ``charge``, optional ``amount``.

        The amount leaves the balance at once, as at Stripe: an ``adjustment`` reported as ``dispute``.
        """
        charge = self._refundable_charge(params)
        amount = p.opt_int(params, "amount")
        disputable = charge["amount"] - charge["amount_refunded"]
        if amount is None:
            amount = disputable
        if not 0 < amount <= disputable:
            raise invalid(f"A dispute is for 1 to {disputable}, not {amount}.", param="amount")
        now = self.clock.now()
        dispute_id = new_id("dp", 24)
        withdrawal = self._balance_transaction(
            amount=-amount,
            fee=0,
            currency=charge["currency"],
            source=dispute_id,
            type_="adjustment",
            reporting_category="dispute",
            description=f"Chargeback withdrawal for {charge['id']}",
            now=now,
        )
        dispute = {
            "id": dispute_id,
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [public(withdrawal)],
            "charge": charge["id"],
            "created": now,
            "currency": charge["currency"],
            "livemode": False,
            "metadata": {},
            "payment_intent": charge.get("payment_intent"),
            "reason": p.opt_str(params, "reason") or "fraudulent",
            "status": "needs_response",
        }
        self.store.put("dispute", dispute)
        charge["disputed"] = True
        self.store.put("charge", charge)
        self._emit("charge.dispute.created", "dispute", dispute, ctx)
        return dispute

    def close_dispute(self, dispute_id: str, params: dict[str, Any], ctx: RequestContext) -> Obj:
        """The bank decides: ``status`` ``won`` (the money comes back, a ``dispute_reversal``) or ``lost``."""
        dispute = self.store.get("dispute", dispute_id)
        if dispute is None:
            raise no_such("dispute", dispute_id)
        status = p.opt_str(params, "status")
        if status not in ("won", "lost"):
            raise invalid("status must be won or lost.", param="status")
        if dispute["status"] in ("won", "lost"):
            raise unexpected_state(f"Dispute {dispute_id} is already closed ({dispute['status']}).")
        dispute = {**dispute, "status": status}
        if status == "won":
            reversal = self._balance_transaction(
                amount=dispute["amount"],
                fee=0,
                currency=dispute["currency"],
                source=dispute_id,
                type_="adjustment",
                reporting_category="dispute_reversal",
                description=f"Chargeback reversal for {dispute['charge']}",
                now=self.clock.now(),
            )
            dispute["balance_transactions"] = [*dispute.get("balance_transactions", []), public(reversal)]
        self.store.put("dispute", dispute)
        self._emit("charge.dispute.closed", "dispute", dispute, ctx)
        return dispute

    def _refundable_charge(self, params: dict[str, Any]) -> Obj:
        pi_id = p.opt_str(params, "payment_intent")
        ch_id = p.opt_str(params, "charge")
        if pi_id is None and ch_id is None:
            raise invalid(
                "One of the following params should be provided for this request: payment_intent or charge.",
                code="parameter_missing",
            )
        if pi_id is not None:
            intent = self._intent(pi_id)
            if ch_id is not None and ch_id != intent["latest_charge"]:
                raise invalid(f"Charge {ch_id} does not belong to PaymentIntent {pi_id}.", param="charge")
            ch_id = intent["latest_charge"]
            if ch_id is None:
                raise unexpected_state(
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    code="charge_not_refundable",
                )
        assert ch_id is not None
        charge = self.store.get("charge", ch_id)
        if charge is None:
            raise no_such("charge", ch_id, param="charge")
        if charge["status"] != "succeeded":
            raise unexpected_state(
                f"Charge {ch_id} failed and cannot be refunded.", code="charge_not_refundable"
            )
        if not charge["captured"]:
            raise unexpected_state(
                f"Charge {ch_id} has not been captured; cancel its PaymentIntent to release the funds.",
                code="charge_not_refundable",
            )
        return charge

    # -- events ------

    def _emit(self, type_: str, kind: str, obj: Obj, ctx: RequestContext) -> None:
        event = {
            "id": new_id("evt", 24),
            "object": "event",
            "api_version": API_VERSION,
            "created": self.clock.now(),
            "data": {"object": self.render(kind, obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            "type": type_,
        }
        self.store.put("event", event)
        for listener in self._listeners:
            listener(event)
