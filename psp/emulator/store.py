"""The emulator's state: objects by kind with their indexes, idempotency records, and the journal behind them.

Every mutation goes through ``apply`` as a record, live or replayed from the journal, so a restart rebuilds
exactly the same maps, indexes and counters. No IO besides the append-only journal; no Stripe rules here.
The one exception is ``load_bulk``, benchmark seeding that is deliberately neither journaled nor indexed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from psp.emulator.pagination import Key, OrderedIndex, PageRequest

log = logging.getLogger(__name__)

KINDS = (
    "customer",
    "payment_method",
    "payment_intent",
    "charge",
    "refund",
    "dispute",
    "balance_transaction",
    "event",
    "report_run",
    "file",
)
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "payment_intent": ("customer", "status"),
    "charge": ("customer", "payment_intent"),
    "refund": ("charge", "payment_intent"),
    "dispute": ("charge", "payment_intent"),
    "balance_transaction": ("type", "source"),
    "event": ("type",),
}
METADATA_INDEXED = frozenset({"payment_intent", "charge"})
IDEMPOTENCY_TTL_S = 24 * 3600

Obj = dict[str, Any]


def utc_day(ts: int) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


class Journal:
    """Append-only JSON lines; a torn last line (crash mid-write) is ignored on replay."""

    FILE_NAME = "journal.jsonl"

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / self.FILE_NAME
        self._file = self.path.open("a", encoding="utf-8")

    def append(self, record: Obj) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def records(self) -> Iterator[Obj]:
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    log.warning("journal %s: skipping unreadable line %d", self.path, n)

    def truncate(self) -> None:
        self._file.close()
        self._file = self.path.open("w", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


class Store:
    """In-memory maps per object kind, secondary indexes, idempotency records and capture counters."""

    def __init__(self, journal: Journal | None = None) -> None:
        self._journal = journal
        self._clear()
        if journal is not None:
            for record in journal.records():
                self.apply(record)

    def _clear(self) -> None:
        self._objects: dict[str, dict[str, Obj]] = {kind: {} for kind in KINDS}
        self._main: dict[str, OrderedIndex] = {kind: OrderedIndex() for kind in KINDS}
        self._secondary: dict[tuple[str, str, str], OrderedIndex] = {}
        self._seq = 0
        self._idempotency: OrderedDict[tuple[str, str], Obj] = OrderedDict()
        self._bt_days: dict[tuple[str, date], list[str]] = {}
        self.captures = 0
        self.captures_by_idempotency_key: Counter[str] = Counter()
        self.captures_by_payment_id: Counter[str] = Counter()
        self.payment_ids_captured_twice: set[str] = set()

    # -- mutations ------

    def put(self, kind: str, obj: Obj) -> Obj:
        """Insert or replace an object (stored by value: callers pass a fresh dict per version)."""
        self._commit({"op": "put", "kind": kind, "obj": obj})
        return obj

    def save_idempotent(self, scope: str, key: str, record: Obj) -> None:
        self._commit({"op": "idem", "scope": scope, "key": key, "rec": record})

    def reset(self) -> None:
        self._clear()
        if self._journal is not None:
            self._journal.truncate()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def _commit(self, record: Obj) -> None:
        if self._journal is not None:
            self._journal.append(record)
        self.apply(record)

    def apply(self, record: Obj) -> None:
        op = record.get("op")
        if op == "put":
            self._apply_put(record["kind"], record["obj"])
        elif op == "idem":
            k = (record["scope"], record["key"])
            self._idempotency.pop(k, None)
            self._idempotency[k] = record["rec"]
        else:
            log.warning("unknown journal record %r", op)

    def _apply_put(self, kind: str, obj: Obj) -> None:
        objects = self._objects[kind]
        obj_id = obj["id"]
        old = objects.get(obj_id)
        objects[obj_id] = obj
        if old is None:
            self._seq += 1
            key: Key = (int(obj["created"]), self._seq)
            self._main[kind].add(obj_id, key)
        else:
            found = self._main[kind].key_of(obj_id)
            assert found is not None
            key = found
        new_entries = self._index_entries(kind, obj)
        for entry in set(self._index_entries(kind, old)) - set(new_entries):
            self._secondary[(kind, *entry)].discard(obj_id)
        for field, value in new_entries:
            self._secondary.setdefault((kind, field, value), OrderedIndex()).add(obj_id, key)
        if kind == "balance_transaction" and old is None:
            for field in ("created", "available_on"):
                self._bt_days.setdefault((field, utc_day(obj[field])), []).append(obj_id)
        if kind == "charge" and obj.get("captured") and not (old and old.get("captured")):
            self._count_capture(obj)

    def load_bulk(self, kind: str, objs: Iterable[Obj]) -> int:
        """Benchmark seeding: objects straight into the per-kind map, the main index and the day index.

        No journal (gone after a restart), no secondary indexes, no capture counters: a million charges
        must load in seconds. Give objects oldest first; ids must be new (not checked here).
        """
        objects = self._objects[kind]
        index = self._main[kind]
        add = index.add
        newest, _ = index.page(PageRequest(limit=1))
        last = index.key_of(newest[0]) if newest else None
        early_keys: list[Key] = []
        early_ids: list[str] = []
        day_lists: dict[tuple[str, int], list[str]] = {}
        seq = self._seq
        for obj in objs:
            obj_id = obj["id"]
            objects[obj_id] = obj
            seq += 1
            key: Key = (obj["created"], seq)
            if last is None or key >= last:
                add(obj_id, key)
                last = key
            else:
                early_keys.append(key)
                early_ids.append(obj_id)
            if kind == "balance_transaction":
                for field in ("created", "available_on"):
                    day_number = obj[field] // 86_400
                    ids = day_lists.get((field, day_number))
                    if ids is None:
                        day = utc_day(obj[field])
                        ids = day_lists[(field, day_number)] = self._bt_days.setdefault((field, day), [])
                    ids.append(obj_id)
        count = seq - self._seq
        self._seq = seq
        if early_ids:
            self._main[kind] = self._merged(index, early_keys, early_ids)
        return count

    @staticmethod
    def _merged(index: OrderedIndex, keys: list[Key], ids: list[str]) -> OrderedIndex:
        """A new index holding ``index`` and the objects ``ids``/``keys`` sorting before its end.

        A merge of two sorted runs into appends only: a day seeded before the newest objects costs one
        pass, not an insertion per object, and no list of pairs the size of the store.
        """
        if any(keys[n] > keys[n + 1] for n in range(len(keys) - 1)):
            order = sorted(range(len(keys)), key=keys.__getitem__)
            keys, ids = [keys[n] for n in order], [ids[n] for n in order]
        merged = OrderedIndex()
        n = 0
        for obj_id in index.ids_between(-(2**62), 2**62):
            key = index.key_of(obj_id)
            assert key is not None
            while n < len(keys) and keys[n] < key:
                merged.add(ids[n], keys[n])
                n += 1
            merged.add(obj_id, key)
        for m in range(n, len(keys)):
            merged.add(ids[m], keys[m])
        return merged

    def _count_capture(self, charge: Obj) -> None:
        self.captures += 1
        intent = self._objects["payment_intent"].get(charge.get("payment_intent") or "")
        if intent is None:
            return
        if intent.get("_idempotency_key"):
            self.captures_by_idempotency_key[intent["_idempotency_key"]] += 1
        payment_id = (intent.get("metadata") or {}).get("payray_payment_id")
        if payment_id:
            self.captures_by_payment_id[payment_id] += 1
            if self.captures_by_payment_id[payment_id] > 1:
                self.payment_ids_captured_twice.add(payment_id)

    @staticmethod
    def _index_entries(kind: str, obj: Obj | None) -> list[tuple[str, str]]:
        if obj is None:
            return []
        entries = [(f, str(obj[f])) for f in INDEXED_FIELDS.get(kind, ()) if obj.get(f) is not None]
        if kind in METADATA_INDEXED:
            entries += [(f"metadata.{k}", str(v)) for k, v in (obj.get("metadata") or {}).items()]
        return entries

    # -- queries ------

    def get(self, kind: str, obj_id: str) -> Obj | None:
        return self._objects[kind].get(obj_id)

    def objects(self, kind: str) -> Mapping[str, Obj]:
        """The live map of one kind, for readers that look up millions of ids (the settlement report)."""
        return self._objects[kind]

    def count(self, kind: str) -> int:
        return len(self._objects[kind])

    def index(self, kind: str, field: str | None = None, value: str | None = None) -> OrderedIndex:
        """The main index of a kind, or the secondary one for ``field == value`` (empty when none)."""
        if field is None:
            return self._main[kind]
        return self._secondary.get((kind, field, str(value)), OrderedIndex())

    def key_of(self, kind: str, obj_id: str) -> Key | None:
        return self._main[kind].key_of(obj_id)

    def idempotent(self, scope: str, key: str) -> Obj | None:
        return self._idempotency.get((scope, key))

    def idempotency_count(self) -> int:
        return len(self._idempotency)

    def purge_idempotency(self, now: int) -> int:
        """Forget records older than 24 h; oldest first, so each call costs only what it removes."""
        removed = 0
        while self._idempotency:
            k, rec = next(iter(self._idempotency.items()))
            if rec["at"] > now - IDEMPOTENCY_TTL_S:
                break
            del self._idempotency[k]
            removed += 1
        return removed

    def balance_transactions_on(
        self, day: date, by: Literal["created", "available_on"] = "created"
    ) -> list[Obj]:
        """Balance transactions of one UTC day, by creation or by availability (settlement)."""
        objects = self._objects["balance_transaction"]
        return [objects[i] for i in self._bt_days.get((by, day), [])]

    def balance_transaction_ids_on(
        self, day: date, by: Literal["created", "available_on"] = "created"
    ) -> list[str]:
        """A copy of one UTC day's balance transaction ids, in insertion order: cheap to take on the loop."""
        return list(self._bt_days.get((by, day), []))
