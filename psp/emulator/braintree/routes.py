"""Braintree's gateway routes under ``/merchants/{merchant_id}/`` as the SDK calls them, and the
personality's control routes under ``/_emulator/braintree/``."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from psp.emulator.braintree import render, report
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, Merchant
from psp.emulator.braintree.errors import BraintreeError
from psp.emulator.braintree.gateway import NotFound
from psp.emulator.braintree.personality import BRAINTREE, Braintree
from psp.emulator.braintree.pipeline import Answer, Call, Operation, handler
from psp.emulator.braintree.search import PAGE_SIZE
from psp.emulator.braintree.webhooks import BraintreeWebhookConfig
from psp.emulator.braintree.xml_codec import Repeated

MERCHANT = "/merchants/{merchant_id}"
TRANSACTION = MERCHANT + "/transactions/{id}"


def _transaction(status: int, txn: dict[str, Any]) -> Answer:
    return status, "transaction", render.transaction(txn)


def sale(bt: Braintree, call: Call) -> Answer:
    return _transaction(201, bt.gateway.sale(call.merchant, call.params, call.decide_decline))


def find(bt: Braintree, call: Call) -> Answer:
    return _transaction(200, bt.gateway.find(call.merchant, call.match["id"]))


def submit_for_settlement(bt: Braintree, call: Call) -> Answer:
    return _transaction(200, bt.gateway.submit_for_settlement(call.merchant, call.match["id"], call.params))


def void(bt: Braintree, call: Call) -> Answer:
    return _transaction(200, bt.gateway.void(call.merchant, call.match["id"]))


def refund(bt: Braintree, call: Call) -> Answer:
    return _transaction(201, bt.gateway.refund(call.merchant, call.match["id"], call.params))


def search_ids(bt: Braintree, call: Call) -> Answer:
    ids = [t["id"] for t in bt.gateway.search(call.merchant, call.params)]
    return 200, "search_results", {"page_size": PAGE_SIZE, "ids": ids}


def search(bt: Braintree, call: Call) -> Answer:
    found = bt.gateway.search(call.merchant, call.params)[:PAGE_SIZE]
    collection = {
        "@": {"type": "collection"},
        "current_page_number": 1,
        "page_size": PAGE_SIZE,
        "total_items": len(found),
        "transaction": Repeated(render.transaction(t) for t in found),
    }
    return 200, "credit_card_transactions", collection


def testing(event: str) -> Operation:
    def operation(bt: Braintree, call: Call) -> Answer:
        return _transaction(200, bt.gateway.testing_event(call.merchant, call.match["id"], event))

    return operation


def settlement_batch_summary(bt: Braintree, call: Call) -> Answer:
    records = bt.gateway.settlement_summary(call.merchant, call.params.get("settlement_date"))
    return 200, "settlement_batch_summary", {"records": records}


ROUTES: list[tuple[str, str, Any]] = [
    ("POST", MERCHANT + "/transactions", handler(sale, mutates=True)),
    (
        "POST",
        MERCHANT + "/transactions/advanced_search_ids",
        handler(search_ids, root="search", mutates=False),
    ),
    ("POST", MERCHANT + "/transactions/advanced_search", handler(search, root="search", mutates=False)),
    ("GET", TRANSACTION, handler(find, mutates=False)),
    ("PUT", TRANSACTION + "/submit_for_settlement", handler(submit_for_settlement, mutates=True)),
    ("PUT", TRANSACTION + "/void", handler(void, mutates=True)),
    ("POST", TRANSACTION + "/refund", handler(refund, mutates=True)),
    ("PUT", TRANSACTION + "/settle", handler(testing("settle"), mutates=True)),
    ("PUT", TRANSACTION + "/settlement_decline", handler(testing("decline_settlement"), mutates=True)),
    ("PUT", TRANSACTION + "/settlement_pending", handler(testing("hold_settlement"), mutates=True)),
    (
        "POST",
        MERCHANT + "/settlement_batch_summary",
        handler(settlement_batch_summary, root="settlement_batch_summary", mutates=False),
    ),
]


# -- control routes (never part of Braintree's API) ------


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _invalid(message: str) -> web.Response:
    return _json({"error": {"type": "invalid_request_error", "message": message}}, 400)


async def _body(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _bt(request: web.Request) -> Braintree:
    bt = request.app[BRAINTREE]
    bt.gateway.settle_due()
    return bt


async def get_webhooks(request: web.Request) -> web.StreamResponse:
    return _json(_bt(request).webhooks.status())


async def set_webhooks(request: web.Request) -> web.StreamResponse:
    """Where the merchant's notifications go and the delivery faults (the Stripe sender's knobs)."""
    body = await _body(request)
    try:
        config = BraintreeWebhookConfig.model_validate(body)
    except ValidationError as exc:
        return _invalid(f"Invalid webhook configuration: {exc.errors()[0]['msg']}")
    _bt(request).webhooks.configure(config)
    return _json(config.model_dump(mode="json"))


async def clear_webhooks(request: web.Request) -> web.StreamResponse:
    _bt(request).webhooks.configure(None)
    return _json({"config": None})


async def flush_webhooks(request: web.Request) -> web.StreamResponse:
    sender = _bt(request).webhooks
    try:
        timeout = min(float(request.query.get("timeout_s", "30")), 120.0)
    except ValueError:
        return _invalid("timeout_s must be a number")
    flushed = await sender.flush_held()
    return _json({"flushed": flushed, "idle": await sender.idle(timeout)})


async def open_dispute(request: web.Request) -> web.StreamResponse:
    """``{"transaction_id", "amount"?, "reason"?}``: a chargeback opens and ``dispute_opened`` is sent."""
    body = await _body(request)
    if body is None or not isinstance(body.get("transaction_id"), str):
        return _invalid('Expected {"transaction_id": <id>, "amount": "<decimal>", "reason": "fraud"}')
    try:
        dispute = _bt(request).gateway.open_dispute(
            body["transaction_id"], body.get("amount"), str(body.get("reason") or "fraud")
        )
    except NotFound:
        return _json({"error": {"message": f"No such transaction: {body['transaction_id']}"}}, 404)
    except (ValueError, BraintreeError) as exc:
        return _invalid(str(exc))
    return _json(
        {"id": dispute["id"], "transaction_id": dispute["transaction_id"], "status": dispute["status"]}
    )


async def add_merchant(request: web.Request) -> web.StreamResponse:
    """``{"merchant_id", "public_key", "private_key"}``: another merchant the gateway accepts."""
    try:
        merchant = Merchant.model_validate(await _body(request))
    except ValidationError as exc:
        return _invalid(f"Invalid merchant: {exc.errors()[0]['msg']}")
    _bt(request).credentials.add(merchant)
    return _json({"merchant_id": merchant.merchant_id, "public_key": merchant.public_key})


async def settlement_report(request: web.Request) -> web.StreamResponse:
    """``?date=YYYY-MM-DD[&merchant_id=…]``: what settled in that day's batches, as a CSV reconciliation
    loads (the columns of the Stripe personality's report)."""
    bt = _bt(request)
    try:
        day = date.fromisoformat(request.query.get("date", ""))
    except ValueError:
        return _invalid("date must be YYYY-MM-DD")
    merchant_id = request.query.get("merchant_id") or DEFAULT_MERCHANT_ID
    settled = sorted(bt.store.settled_on(merchant_id, day), key=lambda t: (t["submitted_at"], t["id"]))
    text = report.csv_text(settled, lambda txn_id: bt.store.find("transaction", txn_id))
    return web.Response(text=text, content_type="text/csv", charset="utf-8")


async def stats(request: web.Request) -> web.StreamResponse:
    bt = _bt(request)
    return _json({**bt.store.counts(), "idempotency_keys": bt.store.idempotency_count()})


CONTROL_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/_emulator/braintree/webhooks", get_webhooks),
    ("POST", "/_emulator/braintree/webhooks", set_webhooks),
    ("DELETE", "/_emulator/braintree/webhooks", clear_webhooks),
    ("POST", "/_emulator/braintree/webhooks/flush", flush_webhooks),
    ("POST", "/_emulator/braintree/disputes", open_dispute),
    ("POST", "/_emulator/braintree/merchants", add_merchant),
    ("GET", "/_emulator/braintree/settlement_report", settlement_report),
    ("GET", "/_emulator/braintree/stats", stats),
]
