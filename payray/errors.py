"""One error hierarchy that says whose fault it is; mapped to HTTP in exactly one place (serve_app)."""

from __future__ import annotations


class PayrayError(Exception):
    """Root of every error payray raises on purpose."""

    #: HTTP status and Stripe-style error ``type`` used by the API's error envelope.
    status = 500
    type = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param


class ClientError(PayrayError):
    """The caller sent something we refuse; nothing was changed."""

    status = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    code = "parameter_invalid"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class AuthenticationFailed(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class RateLimited(ClientError):
    """Too many requests from one key, or failed authentications from one address (429, as Stripe)."""

    status = 429
    code = "rate_limit"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(ClientError):
    status = 404
    code = "resource_missing"


class IdempotencyKeyInUse(ClientError):
    status = 409
    type = "idempotency_error"
    code = "idempotency_key_in_use"


class IdempotencyKeyReused(ClientError):
    status = 422
    type = "idempotency_error"
    code = "idempotency_key_reused"


class DependencyFailure(PayrayError):
    """A dependency (database, Redis, PSP, Ray) failed; the request may be retried."""

    status = 503
    type = "api_error"
    code = "dependency_unavailable"


class InvariantBreach(PayrayError):
    """Something that must never happen did: stop and page a human."""

    status = 500
    type = "api_error"
    code = "invariant_breach"


class IllegalTransition(InvariantBreach):
    """An event arrived that the state machine does not allow in the current state."""

    def __init__(self, state: str, event: str) -> None:
        super().__init__(f"event {event!r} is not allowed in state {state!r}")
        self.state = state
        self.event = event
