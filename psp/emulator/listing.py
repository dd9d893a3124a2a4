"""List and search endpoints: filter parsing, index choice and Stripe's list / search_result envelopes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from psp.emulator import params as p
from psp.emulator.engine import Engine
from psp.emulator.errors import invalid, no_such
from psp.emulator.pagination import CreatedRange, Key, OrderedIndex, PageRequest
from psp.emulator.store import Obj

# Equality filters served by an index, most selective first; the first one given picks the index.
INDEXED_FILTERS: dict[str, tuple[str, ...]] = {
    "payment_intent": ("customer",),
    "charge": ("payment_intent", "customer"),
    "refund": ("charge", "payment_intent"),
    "balance_transaction": ("source", "type"),
    "event": ("type",),
    "customer": (),
}
SCANNED_FILTERS: dict[str, tuple[str, ...]] = {
    "balance_transaction": ("currency", "payout"),
    "customer": ("email",),
    "event": ("types",),
}
SEARCH_FIELDS: dict[str, frozenset[str]] = {
    "payment_intent": frozenset({"status", "currency", "customer", "amount"}),
    "charge": frozenset({"status", "currency", "customer", "payment_intent", "amount"}),
}
_AND = re.compile(r"\s+AND\s+")
_CLAUSE = re.compile(
    r"""^\s*(?:metadata\[(?P<q>['"])(?P<mkey>.+?)(?P=q)\]|(?P<field>[a-z_]+))\s*:\s*"""
    r"""(?:(?P<vq>['"])(?P<value>(?:\\.|(?!(?P=vq)).)*)(?P=vq)|(?P<bare>-?\d+))\s*$"""
)


def _limit(params: dict[str, Any]) -> int:
    limit = p.opt_int(params, "limit")
    if limit is None:
        return 10
    if not 1 <= limit <= 100:
        raise invalid(
            "This value must be greater than or equal to 1 and less than or equal to 100.", param="limit"
        )
    return limit


def _created(params: dict[str, Any]) -> CreatedRange | None:
    raw = params.get("created")
    if raw is None:
        return None
    if isinstance(raw, str):
        exact = p.opt_int(params, "created")
        return CreatedRange(gte=exact, lte=exact)
    if not isinstance(raw, dict) or set(raw) - {"gt", "gte", "lt", "lte"}:
        raise invalid("Invalid created: must be an integer or a hash of gt, gte, lt, lte", param="created")
    bounds = {k: p.opt_int(raw, k) for k in raw}
    return CreatedRange(**bounds)


def _cursor(engine: Engine, kind: str, params: dict[str, Any], name: str) -> Key | None:
    obj_id = p.opt_str(params, name)
    if obj_id is None:
        return None
    key = engine.store.key_of(kind, obj_id)
    if key is None:
        raise no_such(kind, obj_id, param=name)
    return key


def page_request(engine: Engine, kind: str, params: dict[str, Any]) -> PageRequest:
    return PageRequest(
        limit=_limit(params),
        starting_after=_cursor(engine, kind, params, "starting_after"),
        ending_before=_cursor(engine, kind, params, "ending_before"),
        created=_created(params),
    )


def _event_type_matches(pattern: str, type_: str) -> bool:
    if pattern.endswith("*"):
        return type_.startswith(pattern[:-1])
    return type_ == pattern


def list_objects(engine: Engine, kind: str, params: dict[str, Any], url: str) -> Obj:
    allowed = (
        *INDEXED_FILTERS[kind],
        *SCANNED_FILTERS.get(kind, ()),
        "limit",
        "starting_after",
        "ending_before",
        "created",
    )
    p.reject_unknown(params, allowed)
    page = page_request(engine, kind, params)
    equal = {f: p.req_str(params, f) for f in INDEXED_FILTERS[kind] if f in params}
    patterns: list[str] | None = None
    if kind == "event" and "*" in equal.get("type", ""):
        patterns = [equal.pop("type")]
    index: OrderedIndex = engine.store.index(kind)
    if equal:
        first = next(iter(equal))
        index = engine.store.index(kind, first, equal.pop(first))
    for f in SCANNED_FILTERS.get(kind, ()):
        if f not in params:
            continue
        if f == "payout":
            return {"object": "list", "url": url, "has_more": False, "data": []}
        if f == "types":
            raw = params["types"]
            patterns = (patterns or []) + (raw if isinstance(raw, list) else [raw])
        else:
            equal[f] = p.req_str(params, f).lower() if f == "currency" else p.req_str(params, f)
    keep: Callable[[str], bool] | None = None
    if equal or patterns:
        store = engine.store

        def keep(obj_id: str) -> bool:
            obj = store.get(kind, obj_id)
            if obj is None or any(str(obj.get(f)) != v for f, v in equal.items()):
                return False
            return patterns is None or any(_event_type_matches(t, obj["type"]) for t in patterns)

    ids, has_more = index.page(page, keep)
    expand = [e.removeprefix("data.") for e in p.expand_paths(params) if e.startswith("data.")]
    data = [engine.render(kind, engine.store.get(kind, i) or {}, expand) for i in ids]
    return {"object": "list", "url": url, "has_more": has_more, "data": data}


def parse_query(kind: str, query: str) -> list[tuple[str, str]]:
    """``metadata['k']:'v' AND status:'succeeded'`` → ``[("metadata.k", "v"), ("status", "succeeded")]``."""
    if not query.strip():
        raise invalid("The query is empty.", param="query")
    if re.search(r"\s+OR\s+", query):
        raise invalid("This emulator supports only AND-joined clauses.", param="query")
    clauses = []
    for part in _AND.split(query.strip()):
        m = _CLAUSE.match(part)
        if m is None:
            raise invalid(f"Could not parse the search query clause: {part!r}", param="query")
        value = m.group("bare") if m.group("bare") is not None else re.sub(r"\\(.)", r"\1", m.group("value"))
        if m.group("mkey") is not None:
            clauses.append((f"metadata.{m.group('mkey')}", value))
        elif m.group("field") in SEARCH_FIELDS[kind]:
            clauses.append((m.group("field"), value))
        else:
            raise invalid(f"Field '{m.group('field')}' is not supported for search queries.", param="query")
    return clauses


def search_objects(engine: Engine, kind: str, params: dict[str, Any], url: str) -> Obj:
    p.reject_unknown(params, ("query", "limit", "page"))
    clauses = parse_query(kind, p.req_str(params, "query"))
    limit = _limit(params)
    cursor = p.opt_str(params, "page")
    after = None
    if cursor is not None:
        after = engine.store.key_of(kind, cursor)
        if after is None:
            raise invalid("Invalid page cursor.", param="page")
    indexed = next((c for c in clauses if c[0].startswith("metadata.")), None)
    indexed = indexed or next((c for c in clauses if c[0] in ("status", "customer", "payment_intent")), None)
    index = engine.store.index(kind, *indexed) if indexed else engine.store.index(kind)

    def value_of(obj: Obj, name: str) -> str | None:
        if name.startswith("metadata."):
            return (obj.get("metadata") or {}).get(name.removeprefix("metadata."))
        v = obj.get(name)
        return None if v is None else str(v)

    def keep(obj_id: str) -> bool:
        obj = engine.store.get(kind, obj_id)
        return obj is not None and all(value_of(obj, n) == v for n, v in clauses)

    ids, has_more = index.page(PageRequest(limit=limit, starting_after=after), keep)
    return {
        "object": "search_result",
        "url": url,
        "has_more": has_more,
        "next_page": ids[-1] if has_more and ids else None,
        "data": [engine.render(kind, engine.store.get(kind, i) or {}) for i in ids],
    }
