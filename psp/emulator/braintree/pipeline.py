"""The request pipeline of every Braintree gateway call, in the Stripe personality's order.

Settle closed batches → auth → faults that strike before the operation (nothing committed) → XML body →
``api_request_key`` claim → latency → the operation → saving the answer under the key → faults that strike
after it committed. Every failure is answered the way the SDK expects: a bare status for 401/404/5xx, a 422
``api-error-response`` for refusals and declines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from psp.emulator.braintree import xml_codec
from psp.emulator.braintree.credentials import Merchant
from psp.emulator.braintree.errors import BraintreeError, Code, FieldError, error_response
from psp.emulator.braintree.gateway import NotFound
from psp.emulator.braintree.personality import BRAINTREE, Braintree
from psp.emulator.braintree.search import UnsupportedSearch
from psp.emulator.errors import StripeError
from psp.emulator.faults import Injection
from psp.emulator.idempotency import Replay, fingerprint
from psp.emulator.ids import new_id

log = logging.getLogger(__name__)

API_REQUEST_KEY = "api_request_key"
XML = "application/xml"
#: Stripe idempotency codes as the ``api_request_key`` errors Braintree answers for the same situations.
KEY_ERRORS = {
    "idempotency_key_reused": Code.ApiRequestKeyCanBeReusedOnlyWithTheSameRequest,
    "idempotency_key_in_use": Code.ApiRequestKeyIsInFlight,
    "idempotency_key_invalid": Code.ApiRequestKeyTooLong,
}


@dataclass(frozen=True)
class Call:
    """What an operation gets: the caller, the path's ids and the body's object (``transaction``, …)."""

    merchant: Merchant
    match: dict[str, str]
    params: dict[str, Any]
    decide_decline: Callable[[str], str | None]


Answer = tuple[int, str, Any]  # HTTP status, root element, its value
Operation = Callable[[Braintree, Call], Answer]


def xml_response(status: int, root: str, value: Any) -> web.Response:
    response = web.Response(
        body=xml_codec.encode(root, value), status=status, content_type=XML, charset="utf-8"
    )
    response.enable_compression()
    return response


def bare(status: int) -> web.Response:
    return web.Response(status=status, text="", content_type=XML)


def handler(
    operation: Operation, *, root: str = "transaction", mutates: bool
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler running ``operation`` in the pipeline; the body, when any, must be a ``root``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        braintree = request.app[BRAINTREE]
        try:
            return await _run(request, braintree, operation, root, mutates)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return bare(500)

    return handle


def _inject(braintree: Braintree, request: web.Request, kind: str, request_id: str, **extra: Any) -> None:
    braintree.faults.record(
        Injection(time.time(), kind, request.method, request.path, request_id, None, **extra)
    )


def _drop_connection(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _run(
    request: web.Request, braintree: Braintree, operation: Operation, expected_root: str, mutates: bool
) -> web.StreamResponse:
    request_id = new_id("req", 14)
    braintree.gateway.settle_due()
    merchant = braintree.credentials.authenticate(
        request.match_info["merchant_id"], request.headers.get("Authorization", "")
    )
    if merchant is None:
        return bare(401)
    faults = braintree.faults
    faulty = faults.applies(request.path)
    if faulty:
        pre = faults.before()
        if pre is not None:
            _inject(braintree, request, pre, request_id)
            if pre in ("reset_before", "outage_reset"):
                return _drop_connection(request)
            return bare(503 if pre == "outage_error" else faults.config.error_status)
    try:
        root, params = xml_codec.decode(await request.read())
    except xml_codec.XmlDecodeError:
        return bare(400)
    params = {} if params == "" else params
    if (root and root != expected_root) or not isinstance(params, dict):
        return bare(400)
    key = params.pop(API_REQUEST_KEY, None) if mutates else None
    fp = fingerprint(request.method, request.path, params)
    scope = merchant.merchant_id
    if key is not None:
        try:
            decision = braintree.idempotency.begin(scope, str(key), fp)
        except StripeError as exc:
            code = KEY_ERRORS.get(exc.code or "", Code.ApiRequestKeyCanBeReusedOnlyWithTheSameRequest)
            error = BraintreeError([FieldError(code, API_REQUEST_KEY)])
            return xml_response(422, "api_error_response", error_response(error))
        if isinstance(decision, Replay):
            replayed = web.Response(body=decision.body.encode(), status=decision.status, content_type=XML)
            return await _after(braintree, request, replayed, request_id, faulty, mutates)

    def decide_decline(txn_id: str) -> str | None:
        code = faults.decline() if faulty else None
        if code is not None:
            _inject(braintree, request, "decline", request_id, object_id=txn_id)
        return code

    call = Call(merchant, dict(request.match_info), params, decide_decline)
    saved = True
    try:
        delay = faults.latency_s() if faulty else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            status, root, value = operation(braintree, call)
            response = xml_response(status, root, value)
        except BraintreeError as exc:
            response, saved = xml_response(422, "api_error_response", error_response(exc)), exc.saved
        except NotFound:
            response, saved = bare(404), False
        except UnsupportedSearch:
            response, saved = bare(400), False
    except BaseException:
        if key is not None:
            braintree.idempotency.abandon(scope, str(key))
        raise
    if key is not None:
        if saved and response.body is not None:
            assert isinstance(response.body, bytes)
            body_text = response.body.decode()
            braintree.idempotency.finish(scope, str(key), fp, response.status, body_text, request_id)
        else:
            braintree.idempotency.abandon(scope, str(key))
    return await _after(braintree, request, response, request_id, faulty, mutates)


async def _after(
    braintree: Braintree,
    request: web.Request,
    response: web.Response,
    request_id: str,
    faulty: bool,
    mutates: bool,
) -> web.StreamResponse:
    post = braintree.faults.after("POST" if mutates else "GET") if faulty else None
    if post is None:
        return response
    _inject(braintree, request, post, request_id, status=response.status)
    if post == "truncated_json":
        body = response.body if isinstance(response.body, bytes) else b""
        return web.Response(body=body[: max(1, len(body) // 2)], status=response.status, content_type=XML)
    if post == "timeout_after_commit":
        await asyncio.sleep(braintree.faults.config.hold_ms / 1000.0)
    return _drop_connection(request)
