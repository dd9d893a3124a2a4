"""Stripe's headers on every answer, successes and errors alike: ``Request-Id`` and ``Stripe-Version``.

The id is made once, before anything else runs, and kept in the ASGI scope, so the line a 500 logs
(``failures.py``) and the header the client sees name the same request. ``Stripe-Version`` echoes the version
the client pinned, or names the one this API speaks; a value that is not a version is refused (400).
"""

from __future__ import annotations

import re
import secrets
import string

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payray.errors import InvalidRequest
from serve_app.edge.responses import error_response

#: The version this API's shapes follow (Stripe's, as its SDKs of this generation pin it).
API_VERSION = "2026-10-28.endive"
#: ``2026-10-28``, ``2026-10-28.endive``, with ``;a_beta=v1`` previews: Stripe's forms of a version.
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]{1,32})?(; ?[a-z0-9_]{1,64}=v\d{1,4})*$")
#: Where the request's id is kept in the ASGI scope.
REQUEST_ID = "payray.request_id"
_ALPHABET = string.ascii_letters + string.digits


def new_request_id() -> str:
    """``req_`` and 14 random letters and digits, as Stripe's."""
    return "req_" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def request_id(scope: Scope) -> str:
    """The request's id, made on first use."""
    if REQUEST_ID not in scope:
        scope[REQUEST_ID] = new_request_id()
    return str(scope[REQUEST_ID])


def version_problem(version: str | None) -> InvalidRequest | None:
    if version is None or _VERSION.match(version):
        return None
    message = "Stripe-Version must be an API version such as 2026-10-28 or 2026-10-28.endive"
    return InvalidRequest(message, param="Stripe-Version")


class StripeHeaders:
    """ASGI middleware, outermost: sets ``Request-Id`` and ``Stripe-Version`` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        asked = Headers(scope=scope).get("stripe-version")
        version = asked if asked is not None and version_problem(asked) is None else API_VERSION

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Request-Id"] = rid
                headers["Stripe-Version"] = version
            await send(message)

        problem = version_problem(asked)
        if problem is not None:
            await error_response(Request(scope), problem)(scope, receive, stamped)
            return
        await self.app(scope, receive, stamped)
