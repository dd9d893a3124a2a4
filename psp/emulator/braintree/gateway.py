"""The Braintree gateway's operations on the store: where the pure transaction functions meet persistence,
the emulator's clock and webhook events.

Synchronous, like the Stripe engine: the server runs one event loop, so each operation is atomic with
respect to every other request (no refund can race a void).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable
from datetime import date
from typing import Any

from psp.emulator.braintree import amounts, methods, notifications, render, search
from psp.emulator.braintree import transactions as tx
from psp.emulator.braintree.credentials import Merchant
from psp.emulator.braintree.errors import BraintreeError, Code, FieldError, refused
from psp.emulator.braintree.store import BraintreeStore
from psp.emulator.clock import Clock

EventListener = Callable[[dict[str, Any]], None]
ID_ALPHABET = string.ascii_lowercase + string.digits
MAX_ORDER_ID = 255
DISPUTE_REASONS = ("fraud", "general", "duplicate", "product_not_received", "not_recognized")


class NotFound(Exception):
    """An unknown transaction (the SDK's ``NotFoundError``: a bare 404)."""


def _order_id(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    text = str(raw)
    if len(text) > MAX_ORDER_ID:
        raise BraintreeError([FieldError(Code.OrderIdIsTooLong, "order_id")])
    return text


def _amount(raw: Any) -> int:
    try:
        return amounts.parse(raw)
    except amounts.AmountError as exc:
        raise BraintreeError([exc.error]) from None


class Gateway:
    def __init__(self, store: BraintreeStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._listeners: list[EventListener] = []

    def subscribe(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def _new_id(self, kind: str) -> str:
        while True:
            candidate = "".join(secrets.choice(ID_ALPHABET) for _ in range(8))
            if self.store.find(kind, candidate) is None:
                return candidate

    def _transaction(self, merchant: Merchant, txn_id: str) -> tx.Txn:
        txn = self.store.find("transaction", txn_id)
        if txn is None or txn["merchant_id"] != merchant.merchant_id:
            raise NotFound(txn_id)
        return txn

    def _save(self, txn: tx.Txn) -> tx.Txn:
        return self.store.put_object("transaction", txn)

    # -- the API ------

    def sale(
        self, merchant: Merchant, params: dict[str, Any], forced_decline: Callable[[str], str | None]
    ) -> tx.Txn:
        """A new sale; a decline is stored too and raised with its transaction, as Braintree answers it."""
        kind = params.get("type")
        if kind in (None, ""):
            raise BraintreeError([FieldError(Code.TypeIsRequired, "type")])
        if kind != "sale":
            raise BraintreeError([FieldError(Code.TypeIsInvalid, "type")])
        amount = _amount(params.get("amount"))
        order_id = _order_id(params.get("order_id"))
        instrument = methods.resolve(params)
        txn_id = self._new_id("transaction")
        outcome = methods.authorize(instrument, amount, forced_decline(txn_id))
        options = params.get("options")
        submit = isinstance(options, dict) and options.get("submit_for_settlement") in (True, "true")
        txn = tx.sale(
            txn_id=txn_id,
            merchant_id=merchant.merchant_id,
            merchant_account_id=str(params.get("merchant_account_id") or merchant.merchant_id),
            amount=amount,
            order_id=order_id,
            instrument=instrument,
            outcome=outcome,
            submit=submit,
            now=self.clock.now(),
        )
        self._save(txn)
        if txn["status"] in ("processor_declined", "failed", "gateway_rejected"):
            message = (
                f"Gateway Rejected: {outcome.rejection}"
                if outcome.rejection
                else txn["processor_response_text"]
            )
            raise BraintreeError([], message, transaction=render.transaction(txn), saved=True)
        return txn

    def submit_for_settlement(self, merchant: Merchant, txn_id: str, params: dict[str, Any]) -> tx.Txn:
        txn = self._transaction(merchant, txn_id)
        raw = params.get("amount")
        amount = None if raw in (None, "") else _amount(raw)
        order_id = _order_id(params.get("order_id"))
        return self._save(tx.submit_for_settlement(txn, amount, order_id, self.clock.now()))

    def void(self, merchant: Merchant, txn_id: str) -> tx.Txn:
        return self._save(tx.void(self._transaction(merchant, txn_id), self.clock.now()))

    def refund(self, merchant: Merchant, txn_id: str, params: dict[str, Any]) -> tx.Txn:
        parent = self._transaction(merchant, txn_id)
        raw = params.get("amount")
        amount = None if raw in (None, "") else _amount(raw)
        order_id = _order_id(params.get("order_id"))
        updated, credit = tx.refund(parent, self._new_id("transaction"), amount, order_id, self.clock.now())
        self._save(credit)
        self._save(updated)
        return credit

    def find(self, merchant: Merchant, txn_id: str) -> tx.Txn:
        return self._transaction(merchant, txn_id)

    def search(self, merchant: Merchant, criteria: dict[str, Any]) -> list[tx.Txn]:
        """Matching transactions, newest first; by the order id or id list index when the criteria allow."""
        search.validate(criteria)
        order = criteria.get("order_id")
        if isinstance(order, dict) and "is" in order:
            candidates = self.store.by_order_id(merchant.merchant_id, str(order["is"]))
        elif "ids" in criteria:
            found = (self.store.find("transaction", str(i)) for i in criteria["ids"])
            candidates = [t for t in found if t is not None and t["merchant_id"] == merchant.merchant_id]
        else:
            candidates = self.store.of_merchant(merchant.merchant_id)
        unique = {t["id"]: t for t in candidates}
        return search.newest_first([t for t in unique.values() if search.matches(t, criteria)])

    def testing_event(self, merchant: Merchant, txn_id: str, event: str) -> tx.Txn:
        """The sandbox's testing gateway: settle, decline or hold a submitted transaction now."""
        txn = self._save(tx.settlement_event(self._transaction(merchant, txn_id), event, self.clock.now()))
        self._announce_settlement(txn)
        return txn

    def settlement_summary(self, merchant: Merchant, raw_date: Any) -> list[dict[str, Any]]:
        """Records per card type, merchant account and kind of what settled in the batch of ``raw_date``."""
        if raw_date in (None, ""):
            raise refused(Code.SettlementDateIsRequired, "settlement_date", ("settlement_batch_summary",))
        try:
            day = date.fromisoformat(str(raw_date).strip()[:10])
        except ValueError:
            raise refused(
                Code.SettlementDateIsInvalid, "settlement_date", ("settlement_batch_summary",)
            ) from None
        self.settle_due()
        groups: dict[tuple[str, str, str], list[int]] = {}
        for txn in self.store.settled_on(merchant.merchant_id, day):
            key = (txn["card"]["card_type"], txn["merchant_account_id"], txn["type"])
            groups.setdefault(key, []).append(-txn["amount"] if txn["type"] == "credit" else txn["amount"])
        return [
            {
                "card_type": card_type,
                "merchant_account_id": account,
                "kind": kind,
                "count": str(len(values)),
                "amount_settled": amounts.text(sum(values)),
            }
            for (card_type, account, kind), values in sorted(groups.items())
        ]

    # -- the clock and the control routes ------

    def settle_due(self) -> int:
        """Settle every transaction whose batch has closed by now, each at its batch's close."""
        due = self.store.due(self.clock.now())
        for txn in due:
            settled = self._save(tx.settlement_event(txn, "settle", txn["settles_at"]))
            self._announce_settlement(settled)
        return len(due)

    def open_dispute(self, txn_id: str, amount_raw: Any, reason: str) -> dict[str, Any]:
        txn = self.store.find("transaction", txn_id)
        if txn is None:
            raise NotFound(txn_id)
        if reason not in DISPUTE_REASONS:
            raise ValueError(f"reason must be one of {DISPUTE_REASONS}")
        amount = txn["amount"] if amount_raw in (None, "") else _amount(amount_raw)
        now = self.clock.now()
        dispute = {
            "id": self._new_id("dispute"),
            "merchant_id": txn["merchant_id"],
            "merchant_account_id": txn["merchant_account_id"],
            "amount": amount,
            "currency": txn["currency"],
            "case_number": f"CASE-{secrets.randbelow(10**8):08d}",
            "reason": reason,
            "status": "open",
            "created_at": now,
            "transaction_id": txn["id"],
            "transaction_amount": txn["amount"],
            "transaction_created_at": txn["created_at"],
            "order_id": txn.get("order_id"),
        }
        self.store.put_object("dispute", dispute)
        self._save({**txn, "disputes": [*txn.get("disputes", []), dispute], "updated_at": now})
        self._emit("dispute_opened", txn["merchant_id"], "dispute", render.dispute(dispute), now)
        return dispute

    def _announce_settlement(self, txn: tx.Txn) -> None:
        kind = {"settled": "transaction_settled", "settlement_declined": "transaction_settlement_declined"}
        if txn["status"] in kind:
            self._emit(
                kind[txn["status"]],
                txn["merchant_id"],
                "transaction",
                render.transaction(txn),
                txn["updated_at"],
            )

    def _emit(self, kind: str, merchant_id: str, subject_name: str, subject: dict[str, Any], at: int) -> None:
        document = notifications.notification_xml(kind, subject_name, subject, at)
        event = {
            "id": f"bt_ntf_{secrets.token_hex(8)}",
            "type": kind,
            "merchant_id": merchant_id,
            "payload": notifications.payload(document),
        }
        for listener in self._listeners:
            listener(event)
