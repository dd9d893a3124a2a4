"""The day's settlement as the itemized balance-change report payray reconciles, built from Braintree's
batch summary and a search of the transactions it settled (so it works against Braintree itself)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from psp.braintree.mapping import amount_of, currency_of, decimal_amount, entered_at, unknown_detail, utc_text
from psp.port import PspError

if TYPE_CHECKING:
    from psp.braintree.adapter import BraintreePsp


def report_row(txn: Any, parent: Any, fee: int) -> dict[str, str]:
    """One settled transaction in the columns of the itemized balance-change report payray reconciles:
    keyed by its own id, its sale named as ``charge_id`` and ``payment_intent_id``."""
    cur = currency_of(txn) or "usd"
    credit = getattr(txn, "type", None) == "credit"
    sale = parent if credit and parent is not None else txn
    amount = amount_of(txn) or 0
    gross = -amount if credit else amount
    created = entered_at(txn, "submitted_for_settlement") or txn.created_at
    settled = entered_at(txn, "settled") or created
    own_order = getattr(txn, "order_id", None) or ""
    sale_order = getattr(sale, "order_id", None) or ""
    return {
        "balance_transaction_id": txn.id,
        "created_utc": utc_text(created),
        "available_on_utc": utc_text(settled),
        "reporting_category": "refund" if credit else "charge",
        "currency": cur,
        "gross": decimal_amount(gross, cur),
        "fee": decimal_amount(fee, cur),
        "net": decimal_amount(gross - fee, cur),
        "source_id": txn.id,
        "charge_id": sale.id,
        "payment_intent_id": sale.id,
        "description": getattr(txn, "settlement_batch_id", None) or "",
        "payment_metadata[payray_payment_id]": sale_order,
        "refund_metadata[payray_refund_id]": own_order if credit and own_order != sale_order else "",
    }


def summary_mismatch(rows: Sequence[Mapping[str, str]], records: Sequence[Mapping[str, str]]) -> str | None:
    """Whether the rows found disagree with the batch summary (counts and amounts per currency-less kind);
    a report that misses a transaction must fail, not reconcile short."""

    def totals(pairs: Iterable[tuple[str, Decimal]]) -> dict[str, tuple[int, Decimal]]:
        out: dict[str, tuple[int, Decimal]] = {}
        for kind, amount in pairs:
            count, total = out.get(kind, (0, Decimal(0)))
            out[kind] = (count + 1, total + amount)
        return out

    found = totals(
        ("credit" if r["reporting_category"] == "refund" else "sale", Decimal(r["gross"])) for r in rows
    )
    expected: dict[str, tuple[int, Decimal]] = {}
    for record in records:
        count, total = expected.get(record["kind"], (0, Decimal(0)))
        expected[record["kind"]] = (count + int(record["count"]), total + Decimal(record["amount_settled"]))
    if found != expected:
        return f"found {found}, the batch summary says {expected}"
    return None


class BraintreeSettlementReport:
    """What Braintree settled in one day's batches, in the columns asked for, built from its API alone:
    the batch summary says what the batches hold, a search by settlement time finds the transactions, and
    the two must agree. Works the same against Braintree and the emulator."""

    def __init__(self, psp: BraintreePsp, day: date, columns: Sequence[str]) -> None:
        self._psp = psp
        self._day = day
        self._columns = list(columns)
        self.reference: str | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            settled, parents, records = await self._psp.settled_in_batch(self._day)
        except PspError:
            raise
        except Exception as exc:
            raise PspError(f"settlement report for {self._day}: {unknown_detail(exc, 'read')}") from exc
        self.reference = f"settlement_batch_summary:{self._day.isoformat()}"
        rows = [
            report_row(t, parents.get(getattr(t, "refunded_transaction_id", None) or ""), self._psp.fee(t))
            for t in settled
        ]
        if (mismatch := summary_mismatch(rows, records)) is not None:
            raise PspError(f"settlement report for {self._day}: {mismatch}")
        rows.sort(key=lambda r: (r["created_utc"], r["balance_transaction_id"]))
        unknown = [c for c in self._columns if rows and c not in rows[0]]
        if unknown:
            raise PspError(f"settlement report: no column {', '.join(unknown)}")
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self._columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in self._columns])
        yield out.getvalue().encode()
