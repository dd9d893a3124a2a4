"""Path ids and query values hold no control character: refused before routing, so none reaches a query.

Every path parameter of the API is an object id, so a control character anywhere in the path is reported as
``param: "id"``; a query value is reported by its name (``starting_after``, ``charge``, …).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from payray.errors import InvalidRequest
from payray.text import describe, forbidden_character
from serve_app.edge.responses import error_response


def url_problem(path: str, query_string: bytes) -> InvalidRequest | None:
    """The first control character in the (decoded) path or a query name or value, as the error to answer."""
    bad = forbidden_character(path, free_text=False)
    if bad is not None:
        message = f"the object id in the URL holds the control character {describe(bad)}"
        return InvalidRequest(message, param="id")
    query = query_string.decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        if forbidden_character(name, free_text=False) is not None:
            return InvalidRequest("a query parameter's name holds a control character")
        bad = forbidden_character(value, free_text=False)
        if bad is not None:
            return InvalidRequest(f"{name} holds the control character {describe(bad)}", param=name)
    return None


class RefuseControlCharactersInUrls:
    """ASGI middleware: 400 ``invalid_request_error`` for a URL that ``url_problem`` faults."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = url_problem(scope.get("path", ""), scope.get("query_string", b""))
            if problem is not None:
                await error_response(Request(scope), problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
