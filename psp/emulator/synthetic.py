"""A day of synthetic charges and refunds for benchmarks, identical on the PSP side and on payray's side.

``synthetic_day`` is pure arithmetic on the index (no randomness), so a benchmark seeding payray's ledger
and the emulator seeding its store from the same arguments produce the same payments, amounts and ids.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from operator import itemgetter

from psp.emulator.balance import available_on, processing_fee
from psp.emulator.settlement import DAY_S, PAYMENT_ID_KEY, day_start
from psp.emulator.store import Obj, Store

MAX_CHARGES = 2_000_000
MIN_AMOUNT = 100
MAX_AMOUNT = 99_999
_AMOUNT_STEP = 7_919  # a prime: consecutive indexes land far apart over the whole range


@dataclass(frozen=True, slots=True)
class SyntheticCharge:
    index: int
    payment_intent_id: str
    charge_id: str
    charge_txn_id: str
    amount: int
    currency: str
    fee: int
    created: int
    refund_id: str | None
    refund_txn_id: str | None
    refund_amount: int | None
    refund_created: int | None
    payment_id: str


def synthetic_day(day: date, count: int, prefix: str, refund_every: int = 10) -> Iterator[SyntheticCharge]:
    """``count`` captured charges spread evenly over ``day`` (UTC), oldest first.

    Amounts cycle over 100..99_999; every 5th charge (1-based) is in eur and every 50th in jpy, the rest usd;
    every ``refund_every``-th (0: none) is half refunded later the same day.
    """
    start = day_start(day)
    end = start + DAY_S
    span = MAX_AMOUNT - MIN_AMOUNT + 1
    for index in range(count):
        nth = index + 1
        currency = "jpy" if nth % 50 == 0 else "eur" if nth % 5 == 0 else "usd"
        amount = MIN_AMOUNT + (index * _AMOUNT_STEP) % span
        created = start + index * DAY_S // count
        refunded = refund_every > 0 and nth % refund_every == 0
        tag = f"{prefix}{index:09d}"
        yield SyntheticCharge(
            index=index,
            payment_intent_id=f"pi_{tag}",
            charge_id=f"ch_{tag}",
            charge_txn_id=f"txn_{prefix}c{index:09d}",
            amount=amount,
            currency=currency,
            fee=processing_fee(amount, currency),
            created=created,
            refund_id=f"re_{tag}" if refunded else None,
            refund_txn_id=f"txn_{prefix}r{index:09d}" if refunded else None,
            refund_amount=amount // 2 if refunded else None,
            refund_created=created + (end - created) // 2 if refunded else None,
            payment_id=f"pay_{tag}",
        )


@dataclass
class SeededObjects:
    charges: list[Obj]
    refunds: list[Obj]
    balance_transactions: list[Obj]

    def by_kind(self) -> list[tuple[str, str, list[Obj]]]:
        """(store kind, count name, objects), in the order to load them."""
        return [
            ("charge", "charges", self.charges),
            ("refund", "refunds", self.refunds),
            ("balance_transaction", "balance_transactions", self.balance_transactions),
        ]


def build_objects(day: date, count: int, prefix: str, refund_every: int = 10) -> SeededObjects:
    """The minimal Stripe objects the settlement report needs (ten keys at most: dicts stay small)."""
    charges: list[Obj] = []
    refunds: list[Obj] = []
    charge_txns: list[Obj] = []
    refund_txns: list[Obj] = []
    settles = available_on(day_start(day))
    for c in synthetic_day(day, count, prefix, refund_every):
        charges.append(
            {
                "id": c.charge_id,
                "object": "charge",
                "amount": c.amount,
                "balance_transaction": c.charge_txn_id,
                "captured": True,
                "created": c.created,
                "currency": c.currency,
                "metadata": {PAYMENT_ID_KEY: c.payment_id},
                "payment_intent": c.payment_intent_id,
                "status": "succeeded",
            }
        )
        charge_txns.append(
            _txn(c.charge_txn_id, c.amount, c.fee, c.currency, c.created, settles, c.charge_id)
        )
        if c.refund_id is not None:
            assert (
                c.refund_txn_id is not None and c.refund_amount is not None and c.refund_created is not None
            )
            refunds.append(
                {
                    "id": c.refund_id,
                    "object": "refund",
                    "amount": c.refund_amount,
                    "balance_transaction": c.refund_txn_id,
                    "charge": c.charge_id,
                    "created": c.refund_created,
                    "currency": c.currency,
                    "metadata": {},
                    "payment_intent": c.payment_intent_id,
                    "status": "succeeded",
                }
            )
            refund_txns.append(
                _txn(c.refund_txn_id, -c.refund_amount, 0, c.currency, c.refund_created, settles, c.refund_id)
            )
    txns = list(heapq.merge(charge_txns, refund_txns, key=itemgetter("created")))
    return SeededObjects(charges, refunds, txns)


def _txn(txn_id: str, amount: int, fee: int, currency: str, created: int, settles: int, source: str) -> Obj:
    category = "charge" if amount > 0 else "refund"
    return {
        "id": txn_id,
        "object": "balance_transaction",
        "amount": amount,
        "available_on": settles,
        "created": created,
        "currency": currency,
        "fee": fee,
        "net": amount - fee,
        "reporting_category": category,
        "source": source,
    }


def already_seeded(store: Store, prefix: str) -> bool:
    """Ids depend on the prefix and index only (and prefixes of one length cannot overlap), so a prefix
    seeded before always shows in its first charge: an O(1) check."""
    return store.get("charge", f"ch_{prefix}{0:09d}") is not None


def load(store: Store, objects: SeededObjects) -> dict[str, int]:
    return {name: store.load_bulk(kind, objs) for kind, name, objs in objects.by_kind()}
