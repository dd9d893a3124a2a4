"""Stored Braintree objects in the gateway's wire shape (the XML codec dasherizes the names)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from psp.emulator.braintree.amounts import text
from psp.emulator.braintree.transactions import Txn


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def transaction(txn: Txn) -> dict[str, Any]:
    refund_ids = list(txn.get("refund_ids", []))
    return {
        "id": txn["id"],
        "status": txn["status"],
        "type": txn["type"],
        "currency_iso_code": txn["currency"],
        "amount": text(txn["amount"]),
        "merchant_account_id": txn["merchant_account_id"],
        "order_id": txn.get("order_id"),
        "created_at": at(txn["created_at"]),
        "updated_at": at(txn["updated_at"]),
        "processor_response_code": txn["processor_response_code"],
        "processor_response_text": txn["processor_response_text"],
        "processor_response_type": txn["processor_response_type"],
        "processor_authorization_code": None if txn["processor_response_code"] != "1000" else "EMU123",
        "gateway_rejection_reason": txn.get("gateway_rejection_reason"),
        "refund_id": refund_ids[-1] if refund_ids else None,
        "refund_ids": refund_ids,
        "refunded_transaction_id": txn.get("refunded_transaction_id"),
        "settlement_batch_id": txn.get("settlement_batch_id"),
        "payment_instrument_type": "credit_card",
        "credit_card": {**txn["card"], "expired": False},
        "status_history": [
            {
                "status": h["status"],
                "timestamp": at(h["timestamp"]),
                "amount": text(h["amount"]),
                "transaction_source": h["transaction_source"],
                "user": None,
            }
            for h in txn.get("status_history", [])
        ],
        "disputes": [dispute(d) for d in txn.get("disputes", [])],
    }


def dispute(item: dict[str, Any]) -> dict[str, Any]:
    opened = at(item["created_at"])
    return {
        "id": item["id"],
        "amount": text(item["amount"]),
        "amount_disputed": text(item["amount"]),
        "amount_won": "0.00",
        "case_number": item["case_number"],
        "created_at": opened,
        "updated_at": opened,
        "currency_iso_code": item["currency"],
        "kind": "chargeback",
        "merchant_account_id": item["merchant_account_id"],
        "reason": item["reason"],
        "received_date": opened.date(),
        "reply_by_date": date.fromordinal(opened.date().toordinal() + 7),
        "status": item["status"],
        "status_history": [{"status": item["status"], "timestamp": opened}],
        "evidence": [],
        "transaction": {
            "id": item["transaction_id"],
            "amount": text(item["transaction_amount"]),
            "created_at": at(item["transaction_created_at"]),
            "order_id": item.get("order_id"),
        },
    }
