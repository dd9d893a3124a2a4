"""The request pipeline every ``/v1`` call goes through, in Stripe's order.

Request-Id → auth → faults that strike before the operation (never saved) → params → idempotency claim →
latency → the operation → saving the answer under the key → faults that strike after it committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any

from aiohttp import web

from payray.forms import decode_form
from psp.emulator.engine import RequestContext
from psp.emulator.errors import StripeError, invalid
from psp.emulator.faults import Injection, PostFault
from psp.emulator.idempotency import Proceed, Replay, fingerprint
from psp.emulator.ids import new_id
from psp.emulator.routes import CONTEXT, PARAMS, Handler, json_response
from psp.emulator.runtime import EMULATOR, Emulator

log = logging.getLogger(__name__)


def error_response(exc: StripeError) -> web.Response:
    return json_response(exc.body(), exc.status)


@web.middleware
async def stripe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_id("req", 14)
    try:
        if request.path.startswith("/v1/"):
            response = await _v1(request, handler, request_id)
        else:
            response = await handler(request)
    except web.HTTPException as exc:
        message = f"Unrecognized request URL ({request.method}: {request.path})."
        if exc.status != 404:
            message = f"{exc.reason} ({request.method}: {request.path})."
        response = error_response(StripeError(exc.status, "invalid_request_error", message, saved=False))
    except StripeError as exc:
        response = error_response(exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(StripeError(500, "api_error", "An unexpected error occurred.", saved=False))
    response.headers["Request-Id"] = request_id
    return response


def _api_key(request: web.Request, emulator: Emulator) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credential.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credential.strip()).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    if not key:
        raise StripeError(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            saved=False,
        )
    valid = key == emulator.api_key if emulator.api_key else key.startswith("sk_test_")
    if not valid:
        raise StripeError(
            401, "invalid_request_error", f"Invalid API Key provided: {key[:8]}{'*' * 8}", saved=False
        )
    return key


async def _params(request: web.Request) -> dict[str, Any]:
    try:
        if request.method in ("GET", "DELETE"):
            return decode_form(request.query_string, strict=False)
        body = await request.read()
        if request.content_type == "application/json" and body:
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                raise invalid("The JSON body must be an object.")
            return parsed
        return decode_form(body, strict=False)
    except ValueError as exc:  # FormDecodeError and JSON errors alike
        raise invalid(f"Invalid request body: {exc}") from None


def _inject(emulator: Emulator, request: web.Request, kind: str, request_id: str, **extra: Any) -> None:
    emulator.faults.record(
        Injection(
            at=time.time(),
            kind=kind,
            method=request.method,
            path=request.path,
            request_id=request_id,
            idempotency_key=request.headers.get("Idempotency-Key"),
            **extra,
        )
    )


def _fault_error(emulator: Emulator, status: int) -> web.Response:
    if status == 429:
        exc = StripeError(
            429,
            "invalid_request_error",
            "Too many requests hit the API too quickly.",
            code="rate_limit",
            saved=False,
        )
    else:
        exc = StripeError(
            status, "api_error", "An unexpected error occurred (injected by the PSP emulator).", saved=False
        )
    response = error_response(exc)
    if emulator.faults.config.should_retry is not None:
        response.headers["Stripe-Should-Retry"] = "true" if emulator.faults.config.should_retry else "false"
    return response


def _drop_connection(request: web.Request) -> web.Response:
    """Close the socket without an answer; the response returned is never written."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def _v1(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    api_key = _api_key(request, emulator)
    faults = emulator.faults
    faulty = faults.applies(request.path)
    if faulty:
        pre = faults.before()
        if pre is not None:
            _inject(emulator, request, pre, request_id)
            if pre in ("reset_before", "outage_reset"):
                return _drop_connection(request)
            return _fault_error(emulator, 503 if pre == "outage_error" else faults.config.error_status)
    params = await _params(request)
    request[PARAMS] = params
    idem_key = request.headers.get("Idempotency-Key") if request.method == "POST" else None

    def decide_decline(obj_id: str) -> str | None:
        code = faults.decline() if faulty else None
        if code is not None:
            _inject(emulator, request, "decline", request_id, object_id=obj_id)
        return code

    request[CONTEXT] = RequestContext(request_id, idem_key, decide_decline)
    fp = fingerprint(request.method, request.path, params)
    if idem_key is not None:
        decision = emulator.idempotency.begin(api_key, idem_key, fp)
        if isinstance(decision, Replay):
            replayed = web.Response(
                text=decision.body, status=decision.status, content_type="application/json"
            )
            replayed.headers["Idempotent-Replayed"] = "true"
            if decision.original_request:
                replayed.headers["Original-Request"] = decision.original_request
            return await _after(emulator, request, replayed, request_id, faulty)
        assert isinstance(decision, Proceed)
    try:
        delay = faults.latency_s() if faulty else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        saved = True
        response: web.StreamResponse
        try:
            response = await handler(request)
        except StripeError as exc:
            response, saved = error_response(exc), exc.saved
    except BaseException:
        if idem_key is not None:
            emulator.idempotency.abandon(api_key, idem_key)
        raise
    if idem_key is not None:
        if saved and isinstance(response, web.Response) and response.status < 500:
            body = response.text or ""
            emulator.idempotency.finish(api_key, idem_key, fp, response.status, body, request_id)
        else:
            emulator.idempotency.abandon(api_key, idem_key)
    return await _after(emulator, request, response, request_id, faulty)


async def _after(
    emulator: Emulator, request: web.Request, response: web.StreamResponse, request_id: str, faulty: bool
) -> web.StreamResponse:
    post: PostFault | None = emulator.faults.after(request.method) if faulty else None
    if post is None:
        return response
    object_id = None
    if isinstance(response, web.Response) and response.text:
        try:
            body = json.loads(response.text)
            object_id = body.get("id") or ((body.get("error") or {}).get("payment_intent") or {}).get("id")
        except (ValueError, AttributeError):
            object_id = None
    _inject(emulator, request, post, request_id, object_id=object_id, status=response.status)
    if post == "truncated_json" and isinstance(response, web.Response):
        text = response.text or ""
        truncated = web.Response(
            text=text[: max(1, len(text) // 2)], status=response.status, content_type="application/json"
        )
        return truncated
    if post == "timeout_after_commit":
        await asyncio.sleep(emulator.faults.config.hold_ms / 1000.0)
    return _drop_connection(request)
