"""Stripe's ``/v1`` routes: each handler reads the decoded params and context the middleware prepared."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from psp.emulator import listing
from psp.emulator.engine import Engine, RequestContext
from psp.emulator.params import expand_paths
from psp.emulator.runtime import EMULATOR
from psp.emulator.store import Obj

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PARAMS = "stripe_params"
CONTEXT = "stripe_context"


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", charset="utf-8"
    )


def _engine(request: web.Request) -> Engine:
    return request.app[EMULATOR].engine


def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = request[PARAMS]
    return params


def _ctx(request: web.Request) -> RequestContext:
    ctx: RequestContext = request[CONTEXT]
    return ctx


def _render(request: web.Request, kind: str, obj: Obj) -> web.Response:
    return json_response(_engine(request).render(kind, obj, expand_paths(_params(request))))


def create(kind: str, operation: Callable[[Engine, dict[str, Any], RequestContext], Obj]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return _render(request, kind, operation(_engine(request), _params(request), _ctx(request)))

    return handler


def act(kind: str, operation: Callable[[Engine, str, dict[str, Any], RequestContext], Obj]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        obj = operation(_engine(request), request.match_info["id"], _params(request), _ctx(request))
        return _render(request, kind, obj)

    return handler


def retrieve(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        obj = _engine(request).retrieve(kind, request.match_info["id"], expand_paths(_params(request)))
        return json_response(obj)

    return handler


def list_of(kind: str, url: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(listing.list_objects(_engine(request), kind, _params(request), url))

    return handler


def search_of(kind: str, url: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return json_response(listing.search_objects(_engine(request), kind, _params(request), url))

    return handler


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def create_report_run(request: web.Request) -> web.StreamResponse:
    reports = request.app[EMULATOR].reports
    run = reports.create(_params(request))
    return json_response(reports.run(run["id"], _base_url(request)))


async def retrieve_report_run(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[EMULATOR].reports.run(request.match_info["id"], _base_url(request)))


async def retrieve_file(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[EMULATOR].reports.file(request.match_info["id"], _base_url(request)))


async def file_contents(request: web.Request) -> web.StreamResponse:
    """The CSV streamed from disk (reports of a million rows are tens of megabytes)."""
    path = request.app[EMULATOR].reports.contents(request.match_info["id"])
    return web.FileResponse(path, headers={"Content-Type": "text/csv; charset=utf-8"})


ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/customers", create("customer", Engine.create_customer)),
    ("GET", "/v1/customers", list_of("customer", "/v1/customers")),
    ("GET", "/v1/customers/{id}", retrieve("customer")),
    ("POST", "/v1/payment_methods", create("payment_method", Engine.create_payment_method)),
    ("GET", "/v1/payment_methods/{id}", retrieve("payment_method")),
    ("GET", "/v1/payment_intents/search", search_of("payment_intent", "/v1/payment_intents/search")),
    ("POST", "/v1/payment_intents", create("payment_intent", Engine.create_payment_intent)),
    ("GET", "/v1/payment_intents", list_of("payment_intent", "/v1/payment_intents")),
    ("GET", "/v1/payment_intents/{id}", retrieve("payment_intent")),
    ("POST", "/v1/payment_intents/{id}", act("payment_intent", Engine.update_payment_intent)),
    ("POST", "/v1/payment_intents/{id}/confirm", act("payment_intent", Engine.confirm_payment_intent)),
    ("POST", "/v1/payment_intents/{id}/capture", act("payment_intent", Engine.capture_payment_intent)),
    ("POST", "/v1/payment_intents/{id}/cancel", act("payment_intent", Engine.cancel_payment_intent)),
    ("GET", "/v1/charges/search", search_of("charge", "/v1/charges/search")),
    ("GET", "/v1/charges", list_of("charge", "/v1/charges")),
    ("GET", "/v1/charges/{id}", retrieve("charge")),
    ("POST", "/v1/refunds", create("refund", Engine.create_refund)),
    ("GET", "/v1/refunds", list_of("refund", "/v1/refunds")),
    ("GET", "/v1/refunds/{id}", retrieve("refund")),
    ("GET", "/v1/balance_transactions", list_of("balance_transaction", "/v1/balance_transactions")),
    ("GET", "/v1/balance_transactions/{id}", retrieve("balance_transaction")),
    ("GET", "/v1/disputes", list_of("dispute", "/v1/disputes")),
    ("GET", "/v1/disputes/{id}", retrieve("dispute")),
    ("GET", "/v1/events", list_of("event", "/v1/events")),
    ("GET", "/v1/events/{id}", retrieve("event")),
    ("POST", "/v1/reporting/report_runs", create_report_run),
    ("GET", "/v1/reporting/report_runs/{id}", retrieve_report_run),
    ("GET", "/v1/files/{id}", retrieve_file),
    ("GET", "/v1/files/{id}/contents", file_contents),
]
