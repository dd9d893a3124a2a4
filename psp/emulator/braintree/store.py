"""Braintree's objects in the emulator's journaled store: transactions and disputes with their indexes.

A subclass of the Stripe store, so persistence (the append-only journal and its replay), idempotency records
and reset are the very same code; it adds ``bt_put`` records and the indexes Braintree's reads need. It keeps
its own journal file beside Stripe's, under ``braintree/``.
"""

from __future__ import annotations

import heapq
from datetime import date
from typing import Any

from psp.emulator.store import Journal, Obj, Store

BT_KINDS = ("transaction", "dispute")
BT_PUT = "bt_put"


class BraintreeStore(Store):
    def __init__(self, journal: Journal | None = None) -> None:
        super().__init__(journal)

    def _clear(self) -> None:
        super()._clear()
        self._bt: dict[str, dict[str, Obj]] = {kind: {} for kind in BT_KINDS}
        self._by_order: dict[tuple[str, str], list[str]] = {}
        self._by_merchant: dict[str, list[str]] = {}
        self._due: list[tuple[int, str]] = []
        self._settled_on: dict[tuple[str, str], list[str]] = {}

    def put_object(self, kind: str, obj: Obj) -> Obj:
        """Insert or replace a transaction or dispute (callers pass a fresh dict per version)."""
        self._commit({"op": BT_PUT, "kind": kind, "obj": obj})
        return obj

    def apply(self, record: Obj) -> None:
        if record.get("op") != BT_PUT:
            super().apply(record)
            return
        kind, obj = record["kind"], record["obj"]
        old = self._bt[kind].get(obj["id"])
        self._bt[kind][obj["id"]] = obj
        if kind == "transaction":
            self._index_transaction(old, obj)

    def _index_transaction(self, old: Obj | None, txn: Obj) -> None:
        merchant = txn["merchant_id"]
        if old is None:
            self._by_merchant.setdefault(merchant, []).append(txn["id"])
        if txn.get("order_id") and (old is None or old.get("order_id") != txn["order_id"]):
            self._by_order.setdefault((merchant, txn["order_id"]), []).append(txn["id"])
        if txn.get("settles_at") is not None and (old is None or old.get("settles_at") != txn["settles_at"]):
            heapq.heappush(self._due, (txn["settles_at"], txn["id"]))
        if txn.get("settlement_date") and (old is None or not old.get("settlement_date")):
            self._settled_on.setdefault((merchant, txn["settlement_date"]), []).append(txn["id"])

    # -- queries ------

    def find(self, kind: str, obj_id: str) -> Obj | None:
        return self._bt[kind].get(obj_id)

    def by_order_id(self, merchant_id: str, order_id: str) -> list[Obj]:
        """Transactions whose order id is (or once was) ``order_id``; callers re-check the current value."""
        txns = self._bt["transaction"]
        return [txns[i] for i in self._by_order.get((merchant_id, order_id), [])]

    def of_merchant(self, merchant_id: str) -> list[Obj]:
        txns = self._bt["transaction"]
        return [txns[i] for i in self._by_merchant.get(merchant_id, [])]

    def settled_on(self, merchant_id: str, day: date) -> list[Obj]:
        """Transactions settled in the batch of ``day`` (their settlement date), in settlement order."""
        txns = self._bt["transaction"]
        return [txns[i] for i in self._settled_on.get((merchant_id, day.isoformat()), [])]

    def due(self, now: int) -> list[Obj]:
        """Transactions whose batch closed by ``now`` and that still wait for it, oldest first; the entries
        are consumed (a stale entry, for a transaction since voided or resubmitted, is dropped)."""
        out: list[Obj] = []
        while self._due and self._due[0][0] <= now:
            closes, txn_id = heapq.heappop(self._due)
            txn = self._bt["transaction"].get(txn_id)
            if txn is not None and txn.get("settles_at") == closes:
                out.append(txn)
        return out

    def counts(self) -> dict[str, Any]:
        return {kind: len(objs) for kind, objs in self._bt.items()}
