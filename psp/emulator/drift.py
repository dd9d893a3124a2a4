"""Settlement drift: the ways a PSP's daily report disagrees with what the merchant booked, on purpose.

Rows are chosen when the drift is set (not when a report is built), from a seed, so a test knows exactly
which report lines will differ and why, and the same seed over the same data always picks the same rows.
Held in memory only, like the other faults.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from psp.emulator.balance import available_on, processing_fee
from psp.emulator.errors import invalid
from psp.emulator.settlement import DAY_S, Plan, day_start, related
from psp.emulator.store import Obj, Store

Count = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ALPHABET = string.ascii_letters + string.digits
Day = date  # the request's ``date`` field shadows the type inside its class


def parse_day(value: str) -> date:
    """Strictly ``YYYY-MM-DD``."""
    if not _DATE.match(value):
        raise ValueError("must be a date as YYYY-MM-DD")
    return date.fromisoformat(value)


class DriftRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date: str
    missing_capture: Count = 0
    unknown_row: Annotated[int, Field(ge=0, le=100_000, strict=True)] = 0
    amount_mismatch: Count = 0
    currency_mismatch: Count = 0
    late_settlement: Count = 0
    seed: Annotated[int, Field(strict=True)] = 0

    @field_validator("date")
    @classmethod
    def _is_day(cls, value: str) -> str:
        parse_day(value)
        return value

    @property
    def day(self) -> Day:
        return parse_day(self.date)


@dataclass(frozen=True)
class Injection:
    """One drifted report row; ``row`` is the synthetic balance transaction of an ``unknown_row``."""

    kind: str
    day: date
    balance_transaction: str
    reporting_category: str
    source_id: str
    charge_id: str | None
    payment_intent_id: str | None
    detail: dict[str, Any]
    row: Obj | None = field(default=None, compare=False)

    def to_json(self) -> Obj:
        reference = self.source_id if self.reporting_category == "refund" else self.payment_intent_id
        return {
            "kind": self.kind,
            "date": self.day.isoformat(),
            "balance_transaction": self.balance_transaction,
            "reporting_category": self.reporting_category,
            "source_id": self.source_id,
            "charge_id": self.charge_id,
            "payment_intent_id": self.payment_intent_id,
            "reference": reference,
            "detail": self.detail,
        }


def _fresh_id(rng: random.Random, prefix: str) -> str:
    return prefix + "_" + "".join(rng.choice(_ALPHABET) for _ in range(24))


class SettlementDrift:
    """Injections per UTC day; setting a day replaces what that day had."""

    def __init__(self) -> None:
        self._by_day: dict[date, list[Injection]] = {}

    def clear(self) -> None:
        self._by_day.clear()

    def injections(self, day: date | None = None) -> list[Injection]:
        if day is not None:
            return list(self._by_day.get(day, []))
        return [inj for d in sorted(self._by_day) for inj in self._by_day[d]]

    def inject(self, store: Store, request: DriftRequest) -> list[Injection]:
        """Choose the rows now and replace the day's earlier drift with them."""
        injected = self.choose(store, request)
        self.replace(request.day, injected)
        return injected

    def replace(self, day: date, injections: list[Injection]) -> None:
        self._by_day[day] = list(injections)

    @classmethod
    def choose(cls, store: Store, request: DriftRequest) -> list[Injection]:
        """The rows to drift among the balance transactions created on ``request.day``; only reads the
        store, so a million-row day can be chosen off the event loop."""
        day = request.day
        txns = store.balance_transactions_on(day, "created")
        charges = sorted(t["id"] for t in txns if t["reporting_category"] == "charge")
        eligible = sorted(t["id"] for t in txns if t["reporting_category"] in ("charge", "refund"))
        if request.missing_capture > len(charges):
            raise invalid(
                f"missing_capture asks for {request.missing_capture} rows but {day} has only "
                f"{len(charges)} charge rows."
            )
        rng = random.Random(request.seed)
        missing = rng.sample(charges, request.missing_capture)
        taken = set(missing)
        pool = [i for i in eligible if i not in taken]
        kinds = ("amount_mismatch", "currency_mismatch", "late_settlement")
        wanted = sum(getattr(request, k) for k in kinds)
        if wanted > len(pool):
            raise invalid(
                f"amount_mismatch, currency_mismatch and late_settlement ask for {wanted} rows but {day} has "
                f"only {len(pool)} charge or refund rows besides the missing_capture ones "
                f"({len(eligible)} in all)."
            )
        chosen = rng.sample(pool, wanted)
        plan = [("missing_capture", i) for i in missing]
        start = 0
        for kind in kinds:
            count = getattr(request, kind)
            plan += [(kind, i) for i in chosen[start : start + count]]
            start += count
        result = [cls._drift(store, rng, day, kind, txn_id) for kind, txn_id in plan]
        return result + [cls._unknown_row(store, rng, day) for _ in range(request.unknown_row)]

    @staticmethod
    def _drift(store: Store, rng: random.Random, day: date, kind: str, txn_id: str) -> Injection:
        txn = store.get("balance_transaction", txn_id)
        assert txn is not None
        gross, currency = txn["amount"], txn["currency"]
        detail: dict[str, Any]
        if kind == "missing_capture":
            detail = {"omitted": True, "gross": gross, "currency": currency}
        elif kind == "amount_mismatch":
            delta = rng.randint(1, 500)
            new = gross + delta if gross >= 0 else gross - delta
            detail = {"gross": [gross, new], "net": [gross - txn["fee"], new - txn["fee"]]}
        elif kind == "currency_mismatch":
            detail = {"currency": [currency, "eur" if currency == "usd" else "usd"]}
        else:
            detail = {"settles_on": (day + timedelta(days=1)).isoformat()}
        rel = related(store, txn)
        return Injection(
            kind=kind,
            day=day,
            balance_transaction=txn_id,
            reporting_category=txn["reporting_category"],
            source_id=txn["source"],
            charge_id=rel.charge_id,
            payment_intent_id=rel.payment_intent_id,
            detail=detail,
        )

    @staticmethod
    def _unknown_row(store: Store, rng: random.Random, day: date) -> Injection:
        amount = rng.randint(100, 99_999)
        created = day_start(day) + rng.randrange(DAY_S)
        while True:
            txn_id, charge_id, intent_id = (_fresh_id(rng, p) for p in ("txn", "ch", "pi"))
            known = (store.get(k, i) for k, i in [("balance_transaction", txn_id), ("charge", charge_id)])
            if not any(known):
                break
        fee = processing_fee(amount, "usd")
        row = {
            "id": txn_id,
            "object": "balance_transaction",
            "amount": amount,
            "available_on": available_on(created),
            "created": created,
            "currency": "usd",
            "description": None,
            "fee": fee,
            "net": amount - fee,
            "reporting_category": "charge",
            "source": charge_id,
            "type": "charge",
            "_charge": charge_id,
            "_payment_intent": intent_id,
        }
        detail = {"gross": amount, "fee": fee, "currency": "usd", "created": created}
        return Injection("unknown_row", day, txn_id, "charge", charge_id, charge_id, intent_id, detail, row)

    def plan(self, days: list[date]) -> Plan:
        """What drift does to a report of ``days`` (consecutive): taken on the loop, used off it."""
        plan = Plan()
        if not days:
            return plan
        first, last = days[0], days[-1]
        for day in [first - timedelta(days=1), *days]:
            inside = first <= day <= last
            for inj in self._by_day.get(day, []):
                if inj.kind == "late_settlement":
                    if inside:
                        plan.omit.add(inj.balance_transaction)
                    if first <= day + timedelta(days=1) <= last:
                        plan.late.append(inj.balance_transaction)
                elif not inside:
                    continue
                elif inj.kind == "missing_capture":
                    plan.omit.add(inj.balance_transaction)
                elif inj.kind == "amount_mismatch":
                    plan.amend[inj.balance_transaction] = {"amount": inj.detail["gross"][1]}
                elif inj.kind == "currency_mismatch":
                    plan.amend[inj.balance_transaction] = {"currency": inj.detail["currency"][1]}
                elif inj.row is not None:
                    plan.extra.append(inj.row)
        return plan
