"""The last line of defence: an exception no handler claimed becomes a 500 (503 for an outage), logged safely.

A driver's error text often carries the request's data: psycopg's message holds Postgres' DETAIL and CONTEXT
(the values that broke a constraint, say a card-like number sent in metadata), and an exception's ``str`` may
quote whatever it choked on. So the log line names the exception's type (with the chain of causes, and a
Postgres SQLSTATE), the route's template, a request id and the stack's frames (code, not values), and never a
message, a SQL parameter or the URL with its ids. The id, the request's own (``conventions.py``), is also
sent back in ``Request-Id`` to match them up.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

import psycopg
import psycopg_pool
import redis.exceptions
from ray.exceptions import RayError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payray.errors import DependencyFailure, PayrayError
from serve_app.edge.conventions import request_id as request_id_of
from serve_app.edge.responses import error_response

log = logging.getLogger("payray.api")

#: Exceptions that mean a dependency is down (the request may be retried): 503 rather than 500.
OUTAGES = (
    psycopg.OperationalError, psycopg_pool.PoolTimeout, RayError, asyncio.TimeoutError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)  # fmt: skip


def failure_name(exc: BaseException) -> str:
    """``psycopg.errors.UniqueViolation[23505] <- KeyError``: each type in the chain, never a message."""
    names = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = f"{type(current).__module__}.{type(current).__qualname__}"
        sqlstate = getattr(current, "sqlstate", None)
        names.append(f"{name}[{sqlstate}]" if isinstance(sqlstate, str) else name)
        current = current.__cause__ or current.__context__
    return " <- ".join(names)


def frames(exc: BaseException) -> str:
    """Where it was raised: file, line, function and source line of each frame; no locals, no message."""
    return "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__))).rstrip()


class ContainFailures:
    """ASGI middleware: the error envelope for anything unplanned; a log line without request data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = request_id_of(scope)
            route = getattr(scope.get("route"), "path", "an unrouted URL")
            log.error(
                "unhandled %s on %s %s (request %s)\n%s",
                failure_name(exc), scope.get("method"), route, request_id, frames(exc),
            )  # fmt: skip
            if started:
                return
            error = (
                DependencyFailure(f"a dependency is unavailable: {type(exc).__name__}")
                if isinstance(exc, OUTAGES)
                else PayrayError("An unexpected error occurred; it has been logged.")
            )
            response = error_response(Request(scope), error, headers={"Request-Id": request_id})
            await response(scope, receive, send)
