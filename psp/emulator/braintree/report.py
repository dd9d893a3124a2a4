"""What Braintree settled on a day, in the columns of the Stripe personality's settlement report, so
payray's reconciliation loads either PSP's day the same way.

Rows follow Braintree's batches: a sale or refund submitted during day D settles in D's batch; its row is
dated when it was submitted and keyed by the transaction id (``payment_intent_id`` and ``charge_id`` name
the sale, ``source_id`` the transaction itself). Fees are Braintree's standard 2.59 % + 0.49 on sales.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from typing import Any

from psp.emulator.braintree.amounts import text
from psp.emulator.braintree.transactions import Txn
from psp.emulator.settlement import COLUMNS, utc_text

FEE_BPS = 259
FIXED_FEE = 49


def fee(txn: Txn) -> int:
    if txn["type"] != "sale":
        return 0
    return min(txn["amount"], (txn["amount"] * FEE_BPS + 5_000) // 10_000 + FIXED_FEE)


def row(txn: Txn, parent: Txn | None) -> dict[str, str]:
    sale = parent if txn["type"] == "credit" and parent is not None else txn
    gross = -txn["amount"] if txn["type"] == "credit" else txn["amount"]
    charged = fee(txn)
    own_order = txn.get("order_id") or ""
    return {
        "balance_transaction_id": txn["id"],
        "created_utc": utc_text(txn.get("submitted_at") or txn["created_at"]),
        "available_on_utc": utc_text(txn["settled_at"]),
        "reporting_category": "refund" if txn["type"] == "credit" else "charge",
        "currency": txn["currency"].lower(),
        "gross": text(gross),
        "fee": text(charged),
        "net": text(gross - charged),
        "source_id": txn["id"],
        "charge_id": sale["id"],
        "payment_intent_id": sale["id"],
        "description": txn.get("settlement_batch_id") or "",
        "payment_metadata[payray_payment_id]": sale.get("order_id") or "",
        "refund_metadata[payray_refund_id]": (
            own_order if txn["type"] == "credit" and own_order != (sale.get("order_id") or "") else ""
        ),
    }


def csv_text(
    settled: Iterable[Txn], parent_of: Callable[[str], Txn | None], columns: tuple[str, ...] = COLUMNS
) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for txn in settled:
        parent = parent_of(txn["refunded_transaction_id"]) if txn.get("refunded_transaction_id") else None
        values: dict[str, Any] = row(txn, parent)
        writer.writerow([values[c] for c in columns])
    return out.getvalue()
