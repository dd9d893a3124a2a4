"""The API's responses: JSON bodies, and errors in Stripe's envelope (``{"error": {type, code, …}}``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from payray.errors import IdempotencyKeyReused, PayrayError, RateLimited
from serve_app.wire.render import dumps, error_object

JSON = "application/json"


def json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, media_type=JSON, headers=headers)


def error_response(request: Request, exc: PayrayError, headers: dict[str, str] | None = None) -> Response:
    """``exc`` in Stripe's envelope, with its status (and ``Retry-After`` when it is a rate limit)."""
    status = exc.status
    if isinstance(exc, RateLimited):
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after_s)}
    # Stripe's SDKs map idempotency errors to IdempotencyError only on a 400; speak their dialect to them.
    if isinstance(exc, IdempotencyKeyReused) and request.headers.get("stripe-version"):
        status = 400
    return json_response(status, dumps(error_object(exc)), headers)
