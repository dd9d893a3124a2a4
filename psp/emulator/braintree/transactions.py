"""Braintree transactions as plain dicts, and the pure operations on them: sale, submit for settlement,
void, refund and the settlement events. Time and ids come in as arguments; nothing here does IO.

Settlement runs in daily batches: a transaction submitted during a UTC day settles when that day's batch
closes, at the next midnight UTC (``settles_at``); ``settlement_batch_id`` names the batch's day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from psp.emulator.braintree import machine
from psp.emulator.braintree.errors import Code, refused
from psp.emulator.braintree.methods import APPROVED, Instrument, Outcome, card_details

Txn = dict[str, Any]
DAY_S = 86_400


def batch_close(now: int) -> int:
    """When the batch that a transaction submitted at ``now`` joins closes: the next midnight UTC."""
    return now - now % DAY_S + DAY_S


def batch_day(closes_at: int) -> date:
    """The settlement date of the batch closing at ``closes_at``."""
    return datetime.fromtimestamp(closes_at - 1, UTC).date()


def _history(txn: Txn, status: str, now: int) -> list[dict[str, Any]]:
    entry = {"status": status, "timestamp": now, "amount": txn["amount"], "transaction_source": "api"}
    return [*txn.get("status_history", []), entry]


def _moved(txn: Txn, status: str, now: int, **changes: Any) -> Txn:
    moved = {**txn, **changes, "status": status, "updated_at": now}
    moved["status_history"] = _history(moved, status, now)
    return moved


def sale(
    *,
    txn_id: str,
    merchant_id: str,
    merchant_account_id: str,
    amount: int,
    order_id: str | None,
    instrument: Instrument,
    outcome: Outcome,
    submit: bool,
    now: int,
) -> Txn:
    """A new sale in the status the processor's answer gives it (``submit`` captures an approval at once)."""
    txn: Txn = {
        "id": txn_id,
        "merchant_id": merchant_id,
        "merchant_account_id": merchant_account_id,
        "type": "sale",
        "amount": amount,
        "authorized_amount": amount,
        "currency": "USD",
        "order_id": order_id,
        "card": card_details(instrument),
        "processor_response_code": outcome.response.code,
        "processor_response_text": outcome.response.text,
        "processor_response_type": outcome.response.type,
        "gateway_rejection_reason": outcome.rejection,
        "created_at": now,
        "updated_at": now,
        "refund_ids": [],
        "refunded_amount": 0,
        "refunded_transaction_id": None,
        "settles_at": None,
        "settled_at": None,
        "status": outcome.status,
        "status_history": [],
    }
    txn["status_history"] = _history(txn, outcome.status, now)
    if outcome.status == "authorized" and submit:
        return submit_for_settlement(txn, None, None, now)
    return txn


def submit_for_settlement(txn: Txn, amount: int | None, order_id: str | None, now: int) -> Txn:
    """Capture ``amount`` (all of it when None); less than authorized is a partial settlement."""
    status = machine.next_status(txn["status"], "submit_for_settlement")
    settled_amount = txn["amount"] if amount is None else amount
    if settled_amount > txn["amount"]:
        raise refused(Code.SettlementAmountIsTooLarge, "amount")
    changes: dict[str, Any] = {"amount": settled_amount, "settles_at": batch_close(now), "submitted_at": now}
    if order_id is not None:
        changes["order_id"] = order_id
    return _moved(txn, status, now, **changes)


def void(txn: Txn, now: int) -> Txn:
    return _moved(txn, machine.next_status(txn["status"], "void"), now, settles_at=None)


def settlement_event(txn: Txn, event: str, now: int) -> Txn:
    """``settle``, ``decline_settlement``, ``hold_settlement`` or ``begin_settling``, at ``now``."""
    status = machine.next_status(txn["status"], event)
    if status == "settled":
        closes = txn.get("settles_at") or batch_close(now)
        day = batch_day(min(closes, batch_close(now)))
        batch_id = f"{day.isoformat()}_{txn['merchant_account_id']}"
        return _moved(
            txn,
            status,
            now,
            settles_at=None,
            settled_at=now,
            settlement_date=day.isoformat(),
            settlement_batch_id=batch_id,
        )
    if status == "settlement_declined":
        return _moved(txn, status, now, settles_at=None)
    return _moved(txn, status, now)


def refund(
    parent: Txn, credit_id: str, amount: int | None, order_id: str | None, now: int
) -> tuple[Txn, Txn]:
    """The parent with the refund recorded, and the credit transaction, submitted for settlement."""
    remaining = parent["amount"] - parent.get("refunded_amount", 0)
    wanted = remaining if amount is None else amount
    code = machine.refund_refusal(parent["type"], parent["status"], remaining, wanted)
    if code is not None:
        raise refused(code, "amount" if code is Code.RefundAmountIsTooLarge else "base")
    credit: Txn = {
        **{
            k: v for k, v in parent.items() if k in ("merchant_id", "merchant_account_id", "currency", "card")
        },
        "id": credit_id,
        "type": "credit",
        "amount": wanted,
        "authorized_amount": wanted,
        "order_id": order_id if order_id is not None else parent.get("order_id"),
        "processor_response_code": APPROVED.code,
        "processor_response_text": APPROVED.text,
        "processor_response_type": APPROVED.type,
        "gateway_rejection_reason": None,
        "created_at": now,
        "updated_at": now,
        "refund_ids": [],
        "refunded_amount": 0,
        "refunded_transaction_id": parent["id"],
        "settles_at": batch_close(now),
        "submitted_at": now,
        "settled_at": None,
        "status": "submitted_for_settlement",
        "status_history": [],
    }
    credit["status_history"] = _history(credit, "submitted_for_settlement", now)
    updated = {
        **parent,
        "refund_ids": [*parent.get("refund_ids", []), credit_id],
        "refunded_amount": parent.get("refunded_amount", 0) + wanted,
        "updated_at": now,
    }
    return updated, credit
