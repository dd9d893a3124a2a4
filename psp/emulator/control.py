"""Control routes under ``/_emulator/`` (never part of Stripe's API): faults, clock, reset, stats, record,
settlement drift and benchmark seeding."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from payray.gc_pause import cyclic_gc_paused
from psp.emulator import synthetic
from psp.emulator.braintree.personality import BRAINTREE
from psp.emulator.drift import DriftRequest, parse_day
from psp.emulator.engine import RequestContext
from psp.emulator.errors import invalid
from psp.emulator.faults import FaultConfig, Faults
from psp.emulator.routes import Handler, json_response
from psp.emulator.runtime import EMULATOR
from psp.emulator.webhooks import WebhookConfig


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"Invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid("The body must be a JSON object.")
    return body


PSPS = ("stripe", "braintree")


def _fault_profiles(request: web.Request, psp: Any) -> list[Faults]:
    """The fault profiles a request targets: one PSP's, or both when it names none."""
    if psp is None:
        return [request.app[EMULATOR].faults, request.app[BRAINTREE].faults]
    if psp not in PSPS:
        raise invalid(f"psp must be one of {', '.join(PSPS)}", param="psp")
    return [request.app[EMULATOR].faults if psp == "stripe" else request.app[BRAINTREE].faults]


async def get_faults(request: web.Request) -> web.StreamResponse:
    """Stripe's profile, or ``?psp=braintree``'s."""
    profile = _fault_profiles(request, request.query.get("psp", "stripe"))[0]
    return json_response(profile.config.model_dump(mode="json"))


async def set_faults(request: web.Request) -> web.StreamResponse:
    """Replaces the whole fault configuration (``{}`` clears it) and re-seeds the random source, of the
    PSP named by ``"psp": "stripe" | "braintree"`` (both when absent)."""
    body = await _json_body(request)
    psp = body.pop("psp", None)
    profiles = _fault_profiles(request, psp)
    try:
        config = FaultConfig.model_validate(body)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise invalid(f"Invalid fault configuration: {detail}") from None
    for profile in profiles:
        profile.configure(config)
    answer = config.model_dump(mode="json")
    return json_response(answer if psp is None else {**answer, "psp": psp})


async def clear_faults(request: web.Request) -> web.StreamResponse:
    for profile in _fault_profiles(request, request.query.get("psp")):
        profile.configure(FaultConfig())
    return json_response(FaultConfig().model_dump(mode="json"))


async def injections(request: web.Request) -> web.StreamResponse:
    """Stripe's record of injected faults, or ``?psp=braintree``'s."""
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise invalid("limit must be an integer", param="limit") from None
    profile = _fault_profiles(request, request.query.get("psp", "stripe"))[0]
    return json_response(profile.report(max(0, limit), request.query.get("kind")))


async def reset(request: web.Request) -> web.StreamResponse:
    request.app[EMULATOR].reset()
    request.app[BRAINTREE].reset()
    return json_response({"reset": True})


async def get_clock(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[EMULATOR].clock.state())


async def set_clock(request: web.Request) -> web.StreamResponse:
    """``{"now": <unix ts> | null, "frozen": true}``: pin the clock (frozen, or running on from ``now``)."""
    body = await _json_body(request)
    now = body.get("now")
    frozen = body.get("frozen", True)
    if (now is not None and (isinstance(now, bool) or not isinstance(now, int | float))) or not isinstance(
        frozen, bool
    ):
        raise invalid('Expected {"now": <unix timestamp> | null, "frozen": <bool>}')
    clock = request.app[EMULATOR].clock
    clock.set(now, frozen=frozen)
    return json_response(clock.state())


async def stats(request: web.Request) -> web.StreamResponse:
    """Counts, and capture counts per idempotency key / payray payment id (asked for, or duplicated)."""
    store = request.app[EMULATOR].store
    by_key = store.captures_by_idempotency_key
    by_payment = store.captures_by_payment_id
    keys = request.query.getall("idempotency_key", [])
    payments = request.query.getall("payray_payment_id", [])
    doubled = sorted(store.payment_ids_captured_twice)
    body = {
        "payment_intents": store.count("payment_intent"),
        "charges": store.count("charge"),
        "captures": store.captures,
        "refunds": store.count("refund"),
        "customers": store.count("customer"),
        "balance_transactions": store.count("balance_transaction"),
        "events": store.count("event"),
        "idempotency_keys": store.idempotency_count(),
        "captures_by_idempotency_key": {k: by_key.get(k, 0) for k in keys},
        "captures_by_payray_payment_id": {pid: by_payment.get(pid, 0) for pid in payments},
        "payray_payment_ids_captured_more_than_once": doubled[:100],
        "duplicate_capture_count": len(doubled),
    }
    return json_response(body)


def _validated(model: Any, body: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise invalid(f"Invalid {what}: {detail}") from None


async def get_webhooks(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[EMULATOR].webhooks.status())


async def set_webhooks(request: web.Request) -> web.StreamResponse:
    """The endpoint events go to, its signing secret and the delivery faults; replaces any earlier one."""
    config: WebhookConfig = _validated(WebhookConfig, await _json_body(request), "webhook configuration")
    request.app[EMULATOR].webhooks.configure(config)
    return json_response(config.model_dump(mode="json"))


async def clear_webhooks(request: web.Request) -> web.StreamResponse:
    request.app[EMULATOR].webhooks.configure(None)
    return json_response({"config": None})


async def flush_webhooks(request: web.Request) -> web.StreamResponse:
    """Send what a reorder window holds, then wait (up to ``timeout_s``) until every delivery finished."""
    sender = request.app[EMULATOR].webhooks
    try:
        timeout = float(request.query.get("timeout_s", "30"))
    except ValueError:
        raise invalid("timeout_s must be a number", param="timeout_s") from None
    flushed = await sender.flush_held()
    return json_response({"flushed": flushed, "idle": await sender.idle(min(timeout, 120.0))})


async def open_dispute(request: web.Request) -> web.StreamResponse:
    engine = request.app[EMULATOR].engine
    dispute = engine.open_dispute(await _json_body(request), RequestContext())
    return json_response(engine.render("dispute", dispute))


async def close_dispute(request: web.Request) -> web.StreamResponse:
    engine = request.app[EMULATOR].engine
    dispute = engine.close_dispute(request.match_info["id"], await _json_body(request), RequestContext())
    return json_response(engine.render("dispute", dispute))


async def set_drift(request: web.Request) -> web.StreamResponse:
    """Choose a day's drifted report rows now (replacing that day's earlier drift) and say which."""
    drift: DriftRequest = _validated(DriftRequest, await _json_body(request), "settlement drift")
    emulator = request.app[EMULATOR]
    injected = await asyncio.to_thread(emulator.drift.choose, emulator.store, drift)
    emulator.drift.replace(drift.day, injected)
    return json_response({"date": drift.date, "injections": [i.to_json() for i in injected]})


async def get_drift(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("date")
    try:
        day = parse_day(raw) if raw is not None else None
    except ValueError as exc:
        raise invalid(f"date {exc}", param="date") from None
    injected = request.app[EMULATOR].drift.injections(day)
    return json_response({"injections": [i.to_json() for i in injected]})


async def clear_drift(request: web.Request) -> web.StreamResponse:
    request.app[EMULATOR].drift.clear()
    return json_response({"injections": []})


class SeedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date: str
    charges: Annotated[int, Field(ge=1, le=synthetic.MAX_CHARGES, strict=True)]
    prefix: Annotated[str, Field(pattern=r"^[a-z0-9]{1,12}$")]
    refund_every: Annotated[int, Field(ge=0, strict=True)] = 10

    @field_validator("date")
    @classmethod
    def _is_day(cls, value: str) -> str:
        parse_day(value)
        return value


async def seed_settlement(request: web.Request) -> web.StreamResponse:
    """Load a synthetic day straight into the store (benchmarks): built off the loop, registered on it.

    Registering holds the loop for a few seconds per million charges (one kind at a time)."""
    seed: SeedRequest = _validated(SeedRequest, await _json_body(request), "settlement seed")
    store = request.app[EMULATOR].store
    started = time.perf_counter()
    day = parse_day(seed.date)
    taken = invalid(f"The prefix {seed.prefix} was seeded already: give each day its own.", param="prefix")
    if synthetic.already_seeded(store, seed.prefix):
        raise taken
    with cyclic_gc_paused():
        objects = await asyncio.to_thread(
            synthetic.build_objects, day, seed.charges, seed.prefix, seed.refund_every
        )
        if synthetic.already_seeded(store, seed.prefix):  # a concurrent seed of the same prefix won
            raise taken
        counts: dict[str, int] = {}
        for kind, name, objs in objects.by_kind():  # one kind per turn of the loop: shorter stalls
            counts[name] = store.load_bulk(kind, objs)
            await asyncio.sleep(0.05)
    body = {
        "date": seed.date,
        "prefix": seed.prefix,
        **counts,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return json_response(body)


async def health(request: web.Request) -> web.StreamResponse:
    return json_response({"ok": True})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_emulator/health", health),
    ("GET", "/_emulator/faults", get_faults),
    ("POST", "/_emulator/faults", set_faults),
    ("DELETE", "/_emulator/faults", clear_faults),
    ("GET", "/_emulator/injections", injections),
    ("POST", "/_emulator/reset", reset),
    ("GET", "/_emulator/clock", get_clock),
    ("POST", "/_emulator/clock", set_clock),
    ("GET", "/_emulator/stats", stats),
    ("GET", "/_emulator/webhooks", get_webhooks),
    ("POST", "/_emulator/webhooks", set_webhooks),
    ("DELETE", "/_emulator/webhooks", clear_webhooks),
    ("POST", "/_emulator/webhooks/flush", flush_webhooks),
    ("POST", "/_emulator/disputes", open_dispute),
    ("POST", "/_emulator/disputes/{id}/close", close_dispute),
    ("GET", "/_emulator/settlement/drift", get_drift),
    ("POST", "/_emulator/settlement/drift", set_drift),
    ("DELETE", "/_emulator/settlement/drift", clear_drift),
    ("POST", "/_emulator/settlement/seed", seed_settlement),
]
