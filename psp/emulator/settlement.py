"""The daily settlement report: Stripe's itemized balance-change report as the CSV payray reconciles against.

The columns, their order and their formats are a contract (payray's reconciliation parses this file), so
they live here in one place. Building the file only reads the store, which is why it can run off the event
loop on a snapshot of balance transaction ids.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from psp.emulator.balance import ZERO_DECIMAL
from psp.emulator.store import Obj, Store

REPORT_TYPE = "balance_change_from_activity.itemized.3"
PAYMENT_ID_KEY = "payray_payment_id"
REFUND_ID_KEY = "payray_refund_id"
COLUMNS: tuple[str, ...] = (
    "balance_transaction_id",
    "created_utc",
    "available_on_utc",
    "reporting_category",
    "currency",
    "gross",
    "fee",
    "net",
    "source_id",
    "charge_id",
    "payment_intent_id",
    "description",
    f"payment_metadata[{PAYMENT_ID_KEY}]",
    f"refund_metadata[{REFUND_ID_KEY}]",
)
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
DAY_S = 86_400


def exponent(currency: str) -> int:
    """Digits after the decimal point in the currency's major unit, as Stripe counts them."""
    cur = currency.lower()
    if cur in ZERO_DECIMAL:
        return 0
    return 3 if cur in THREE_DECIMAL else 2


def major(amount: int, currency: str) -> str:
    """Minor units as a decimal string in major units (``-5`` usd → ``-0.05``), by integer arithmetic only."""
    return formatter(exponent(currency))(amount)


@cache
def formatter(digits: int) -> Callable[[int], str]:
    """``major`` for one exponent, its pattern and scale computed once (a report formats millions)."""
    if digits == 0:
        return str
    scale = 10**digits
    pattern = f"%s%d.%0{digits}d"

    def fmt(amount: int) -> str:
        whole, frac = divmod(-amount if amount < 0 else amount, scale)
        return pattern % ("-" if amount < 0 else "", whole, frac)

    return fmt


def utc_text(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def day_start(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def days_between(start: int, end: int) -> list[date]:
    """The UTC days of ``[start, end)``; both are midnights."""
    first = datetime.fromtimestamp(start, UTC).date()
    return [first + timedelta(days=n) for n in range((end - start) // DAY_S)]


class Related(NamedTuple):
    """What a balance transaction is about: the charge (and payment) behind a charge, refund or dispute."""

    charge_id: str
    payment_intent_id: str
    payment_id: str
    refund_id: str


def related(store: Store, txn: Obj) -> Related:
    """Empty strings for what is unknown; ids of a synthetic (drift) row exist nowhere but on the row."""
    if "_charge" in txn:
        return Related(txn["_charge"], txn["_payment_intent"], "", "")
    source = txn.get("source") or ""
    refund_id = ""
    if source.startswith("re_"):
        refund = store.objects("refund").get(source) or {}
        charge_id = refund.get("charge") or ""
        refund_id = (refund.get("metadata") or {}).get(REFUND_ID_KEY, "")
    elif source.startswith("dp_"):
        charge_id = (store.objects("dispute").get(source) or {}).get("charge") or ""
    else:
        charge_id = source
    charge = store.objects("charge").get(charge_id)
    if charge is None:
        return Related(charge_id, "", "", refund_id)
    intent_id = charge.get("payment_intent") or ""
    payment_id = (charge.get("metadata") or {}).get(PAYMENT_ID_KEY)
    if payment_id is None and intent_id:
        intent = store.objects("payment_intent").get(intent_id) or {}
        payment_id = (intent.get("metadata") or {}).get(PAYMENT_ID_KEY)
    return Related(charge_id, intent_id, payment_id or "", refund_id)


@dataclass
class Plan:
    """What settlement drift does to one report: rows left out, rows amended, rows added."""

    omit: set[str] = field(default_factory=set)
    amend: dict[str, dict[str, Any]] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)
    extra: list[Obj] = field(default_factory=list)


def report_rows(store: Store, ids: Sequence[str], plan: Plan) -> list[Obj]:
    """The balance transactions to report, in created order, with late ones moved a day on."""
    txns = store.objects("balance_transaction")
    omit = plan.omit
    rows = [txns[i] for i in ids if i not in omit and i in txns]
    for txn_id in plan.late:
        txn = txns.get(txn_id)
        if txn is not None:
            rows.append(
                {**txn, "created": txn["created"] + DAY_S, "available_on": txn["available_on"] + DAY_S}
            )
    rows.extend(plan.extra)
    rows.sort(key=itemgetter("created"))
    return rows


def lines(store: Store, rows: Iterable[Obj], plan: Plan, columns: Sequence[str]) -> Iterator[list[str]]:
    """One list of strings per row, ``columns`` picked from the full row in the order given."""
    pick = None if tuple(columns) == COLUMNS else [COLUMNS.index(c) for c in columns]
    times: dict[int, str] = {}
    formats: dict[str, Callable[[int], str]] = {}
    amend = plan.amend
    for txn in rows:
        gross, fee, net, currency = txn["amount"], txn["fee"], txn["net"], txn["currency"]
        change = amend.get(txn["id"]) if amend else None
        if change is not None:
            gross = change.get("amount", gross)
            currency = change.get("currency", currency)
            net = gross - fee
        fmt = formats.get(currency)
        if fmt is None:
            fmt = formats[currency] = formatter(exponent(currency))
        created = times.get(txn["created"]) or times.setdefault(txn["created"], utc_text(txn["created"]))
        settles = times.get(txn["available_on"]) or times.setdefault(
            txn["available_on"], utc_text(txn["available_on"])
        )
        charge_id, intent_id, payment_id, refund_id = related(store, txn)
        line = [
            txn["id"],
            created,
            settles,
            txn["reporting_category"],
            currency.lower(),
            fmt(gross),
            fmt(fee),
            fmt(net),
            txn["source"],
            charge_id,
            intent_id,
            txn.get("description") or "",
            payment_id,
            refund_id,
        ]
        yield line if pick is None else [line[i] for i in pick]


def write_report(store: Store, ids: Sequence[str], plan: Plan, columns: Sequence[str], path: Path) -> int:
    """Write the CSV (UTF-8, ``\\n`` line ends, quoted only where needed) atomically; returns its size."""
    rows = report_rows(store, ids, plan)
    partial = path.with_suffix(".part")
    with partial.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(lines(store, rows, plan, columns))
    partial.replace(path)
    return path.stat().st_size
