"""A ledger day built by hand and a settlement report written to match it, for the reconciliation tests.

``LedgerDay`` books captures, refunds and disputes through the ledger's own posting function, with the PSP
references a real charge would have, at the PSP each charge names; ``report_csv`` writes a PSP's report of
the same rows, in the columns and major-unit amounts the PSP sends, so a test changes one side and sees
exactly that difference.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ledger import store
from ledger.postings import capture_posting, dispute_hold_posting, fee_for, refund_fee_share, refund_posting
from ledger.reconcile import REPORT_COLUMNS
from payray.ids import hash_api_key, new_api_key
from payray.money import CURRENCY_EXPONENTS, Money

FEE_BPS = 290


def psp_fee(amount: int) -> int:
    """What the PSP keeps of a charge in these tests (its own rule, not ours): 2.9 % + 30."""
    return min(amount, (amount * 290 + 5_000) // 10_000 + 30)


@dataclass(frozen=True)
class Row:
    """One balance transaction as the PSP reports it (minor units, signed as the PSP signs them)."""

    bt: str
    category: str
    reference: str
    gross: int
    fee: int
    currency: str
    created: datetime
    charge: str = ""
    #: the PSP whose report has this row: its payment's
    psp: str = "stripe"

    def line(self) -> dict[str, str]:
        is_charge = self.category == "charge"
        return {
            "balance_transaction_id": self.bt,
            "created_utc": self.created.strftime("%Y-%m-%d %H:%M:%S"),
            "reporting_category": self.category,
            "currency": self.currency,
            "gross": major(self.gross, self.currency),
            "fee": major(self.fee, self.currency),
            "net": major(self.gross - self.fee, self.currency),
            "source_id": self.charge if is_charge else self.reference,
            "charge_id": self.charge,
            "payment_intent_id": self.reference if is_charge else "",
        }


def major(minor: int, currency: str) -> str:
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    return str(Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent)))


def report_csv(rows: Iterable[Row], columns: tuple[str, ...] = REPORT_COLUMNS) -> bytes:
    lines = [",".join(columns)]
    lines += [",".join(row.line()[c] for c in columns) for row in rows]
    return ("\n".join(lines) + "\n").encode()


class BytesReport:
    """A report already in hand, streamed in small chunks (so COPY sees rows split across chunks)."""

    def __init__(self, data: bytes, chunk: int = 97) -> None:
        self.data = data
        self.chunk = chunk
        self.reference: str | None = "frr_test"

    async def chunks(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]


@dataclass
class LedgerDay:
    """Captures, refunds and disputes booked on ``day``; ``rows`` is what the PSP would report for them."""

    conn: psycopg.Connection[Any]
    day: date
    merchant: str = ""
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.merchant = f"acct_{uuid.uuid4().hex[:12]}"
        self.conn.execute(
            "INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, 'recon test', %s)",
            (self.merchant, hash_api_key(new_api_key())),
        )

    def charge(
        self, amount: int, currency: str = "usd", psp_reference: str | None = None, psp: str = "stripe"
    ) -> Row:
        """A captured charge at ``psp``; ``psp_reference`` names a real PaymentIntent (or sale) there, made up
        when None."""
        n = uuid.uuid4().hex[:12]
        payment_id, pi, ch = f"py_{n}", psp_reference or f"pi_{n}", f"ch_{n}"
        money = Money(amount, currency)
        fee = fee_for(money, FEE_BPS)
        self.conn.execute(
            """INSERT INTO payments (id, merchant_id, amount, currency, fee, payment_method, state,
                                     idempotency_key, psp_idempotency_key, psp_reference, psp)
               VALUES (%s, %s, %s, %s, %s, 'pm_card_visa', 'succeeded', %s, %s, %s, %s)""",
            (payment_id, self.merchant, amount, currency, fee.amount, n, f"psp-{n}", pi, psp),
        )
        self._post(capture_posting(payment_id, self.merchant, money, fee, posting_date=self.day))
        return self._row(f"txn_c{n}", "charge", pi, amount, psp_fee(amount), currency, ch, psp)

    def refund(self, charge: Row, amount: int, psp_reference: str | None = None) -> Row:
        n = uuid.uuid4().hex[:12]
        refund_id, psp_refund = f"re_ours{n}", psp_reference or f"re_{n}"
        money = Money(amount, charge.currency)
        charge_fee = fee_for(Money(charge.gross, charge.currency), FEE_BPS)
        fee = refund_fee_share(charge_fee, charge.gross, 0, amount)
        self.conn.execute(
            """INSERT INTO refunds (id, merchant_id, payment_id, amount, fee_returned, currency, state,
                                    psp_idempotency_key, psp_reference)
               VALUES (%s, %s, %s, %s, %s, %s, 'succeeded', %s, %s)""",
            (refund_id, self.merchant, self._charge_of(charge), amount, fee.amount, charge.currency,
             f"psp-{n}", psp_refund),
        )  # fmt: skip
        self._post(refund_posting(refund_id, self.merchant, money, fee, posting_date=self.day))
        return self._row(
            f"txn_r{n}", "refund", psp_refund, -amount, 0, charge.currency, charge.charge, charge.psp
        )

    def void(self, charge: Row) -> None:
        """The whole charge refunded before it settled, as Braintree does it: by voiding the sale, so the
        refund's PSP reference is the sale's own and the PSP reports neither (no report row)."""
        self.refund(charge, charge.gross, psp_reference=charge.reference)
        self.rows.pop()
        self.rows.remove(charge)

    def compensation(self, charge: Row) -> Row:
        """The whole charge given back because the ledger failed: booked under the payment's own reference,
        with the PSP's refund id in the payment's history."""
        n = uuid.uuid4().hex[:12]
        payment_id, psp_refund = self._charge_of(charge), f"re_{n}"
        self.conn.execute(
            """INSERT INTO payment_transitions (payment_id, from_state, event, to_state, detail)
               VALUES (%s, 'refund_pending', 'psp_refunded', 'compensated', %s)""",
            (payment_id, Jsonb({"psp_refund": psp_refund})),
        )
        money = Money(charge.gross, charge.currency)
        fee = fee_for(money, FEE_BPS)
        self._post(
            refund_posting(f"compensation-{payment_id}", self.merchant, money, fee, posting_date=self.day)
        )
        return self._row(
            f"txn_p{n}", "refund", psp_refund, -charge.gross, 0, charge.currency, charge.charge, charge.psp
        )

    def dispute(self, charge: Row, amount: int, psp_reference: str | None = None) -> Row:
        n = uuid.uuid4().hex[:12]
        dispute_id, psp_dispute = f"du_{n}", psp_reference or f"dp_{n}"
        self.conn.execute(
            """INSERT INTO disputes (id, merchant_id, payment_id, psp_dispute_id, amount, currency, status)
               VALUES (%s, %s, %s, %s, %s, %s, 'open')""",
            (dispute_id, self.merchant, self._charge_of(charge), psp_dispute, amount, charge.currency),
        )
        money = Money(amount, charge.currency)
        self._post(dispute_hold_posting(dispute_id, self.merchant, money, posting_date=self.day))
        return self._row(
            f"txn_d{n}", "dispute", psp_dispute, -amount, 0, charge.currency, charge.charge, charge.psp
        )

    def rows_at(self, psp: str) -> list[Row]:
        """What ``psp``'s report of the day holds."""
        return [row for row in self.rows if row.psp == psp]

    def _row(
        self,
        bt: str,
        category: str,
        ref: str,
        gross: int,
        fee: int,
        currency: str,
        charge: str,
        psp: str = "stripe",
    ) -> Row:
        at = datetime.combine(self.day, time(12)) + timedelta(seconds=len(self.rows))
        self.rows.append(Row(bt, category, ref, gross, fee, currency, at, charge, psp))
        return self.rows[-1]

    def _charge_of(self, charge: Row) -> str:
        found = self.conn.execute("SELECT id FROM payments WHERE psp_reference = %s", (charge.reference,))
        row = found.fetchone()
        assert row is not None
        return str(row[0])

    def _post(self, posting: Any) -> None:
        (result,) = store.post_batch(self.conn, [posting], shard=0)
        assert result.ok, result.error
