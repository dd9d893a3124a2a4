"""What ``/openapi.json`` says of each route: request bodies, query parameters, headers and responses.

The routes read their bodies and queries by hand (to keep Stripe's form dialect and error messages), so
FastAPI cannot see them; each route's decorator takes ``**operation(...)`` instead, built here from the same
pydantic models that validate the bodies (``schemas.py``) and that describe the responses (``objects.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from payray.money import CURRENCY_EXPONENTS
from payray.pages import MAX_CREATED
from serve_app.wire import objects
from serve_app.wire.limits import MAX_BODY_BYTES

MERCHANT_KEY = "merchantKey"
ADMIN_KEY = "adminKey"

_ERRORS: dict[int, str] = {
    400: "Invalid request: bad JSON or form, wrong type, unknown or missing field, out of range",
    401: "No key, an unknown key, or a merchant key on an admin route",
    404: "No such object (another merchant's objects answer 404 too)",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes",
    429: "Too many requests: retry after the time in Retry-After",
    500: "An unexpected error; it has been logged",
    503: "A dependency (database, Redis, Ray, the PSP) is unavailable; the request may be retried",
}
_MONEY_ERRORS: dict[int, str] = {
    409: "A request with this Idempotency-Key is still in flight",
    422: "This Idempotency-Key was used with another request",
}

#: A charge's answers besides 200 (succeeded) and the errors every money POST shares.
CHARGE_OUTCOMES: dict[int, tuple[type[BaseModel] | None, str]] = {
    202: (objects.Charge, "The PSP's answer is not known yet: the charge is pending"),
    402: (objects.Error, "Declined: the failed charge's id is in error.charge"),
}

INTENT_OUTCOMES: dict[int, tuple[type[BaseModel] | None, str]] = {
    202: (objects.PaymentIntent, "The PSP's answer is not known yet: the intent is processing"),
    402: (objects.Error, "Declined: the intent, back to requires_payment_method, is in error.payment_intent"),
}

LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "How many objects a page holds (default 10).",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
STARTING_AFTER = {
    "name": "starting_after",
    "in": "query",
    "required": False,
    "description": "The id of an object of the list: the page starts after it (newest first).",
    "schema": {"type": "string"},
}
ENDING_BEFORE = {
    "name": "ending_before",
    "in": "query",
    "required": False,
    "description": "The id of an object of the list: the page ends before it (the newer ones, still newest "
    "first). Not with starting_after.",
    "schema": {"type": "string"},
}
#: ``created`` as Stripe's lists take it: an exact second, or bounds of a range (unix seconds, whole).
CREATED = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_CREATED},
    }
    for name, description in (
        ("created", "Only objects created in this second (unix time)."),
        ("created[gt]", "Only objects created after this second."),
        ("created[gte]", "Only objects created in or after this second."),
        ("created[lt]", "Only objects created before this second."),
        ("created[lte]", "Only objects created in or before this second."),
    )
]
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1 to 255 printable ASCII characters; a retry with this key and body replays the answer",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}
STRIPE_SIGNATURE = {
    "name": "Stripe-Signature",
    "in": "header",
    "required": True,
    "description": "t=<unix time>,v1=<HMAC-SHA256 of '{t}.{body}' under the webhook secret>",
    "schema": {"type": "string"},
}


def query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}  # fmt: skip


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, with what a client needs to know beyond the types (supported currencies)."""
    schema = model.model_json_schema()
    properties = schema.get("properties", {})
    if "currency" in properties:
        codes = sorted(CURRENCY_EXPONENTS)
        properties["currency"] = {
            **properties["currency"],
            "enum": [*codes, *(code.upper() for code in codes)],
            "description": "ISO 4217, in any case; answered lowercase",
        }
    if "payment_method" in properties:
        properties["payment_method"] = {**properties["payment_method"], "examples": ["pm_card_visa"]}
    return schema


#: Sent on every response, errors included (``serve_app.edge.conventions``).
RESPONSE_HEADERS = {
    "Request-Id": {"description": "req_…, one per request", "schema": {"type": "string"}},
    "Stripe-Version": {
        "description": "The API version the request sent, else the one this API speaks",
        "schema": {"type": "string"},
    },
}


def _response(model: type[BaseModel] | None, description: str) -> dict[str, Any]:
    if model is None:  # the Prometheus text format
        return {
            "description": description,
            "headers": RESPONSE_HEADERS,
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    return {"description": description, "headers": RESPONSE_HEADERS, "model": model}


def operation(
    ok: type[BaseModel] | None,
    *,
    auth: str | None = MERCHANT_KEY,
    body: type[BaseModel] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    money: bool = False,
    extra: dict[int, tuple[type[BaseModel] | None, str]] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``api.get``/``api.post``: ``responses`` and ``openapi_extra`` of one route.

    ``money`` marks a POST that moves money: it needs ``Idempotency-Key`` and may answer 409 and 422.
    """
    responses: dict[int | str, dict[str, Any]] = {200: _response(ok, "Success")}
    for status, (model, description) in (extra or {}).items():
        responses[status] = _response(model, description)
    errors = {**_ERRORS, **(_MONEY_ERRORS if money else {})}
    if body is None:
        errors.pop(413)
    if auth is None:
        errors.pop(401)
    for status, description in errors.items():
        responses.setdefault(status, _response(objects.Error, description))
    extra_doc: dict[str, Any] = {"parameters": [*(parameters or []), *([IDEMPOTENCY_KEY] if money else [])]}
    extra_doc["security"] = [{auth: []}] if auth is not None else []
    if body is not None:
        schema = body_schema(body)
        extra_doc["requestBody"] = {
            "required": True,
            "description": "JSON, or a form as Stripe's SDKs send it (bracket notation: metadata[order]=42).",
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {
                    "schema": schema,
                    "encoding": {
                        name: {"style": "deepObject", "explode": True}
                        for name, prop in schema.get("properties", {}).items()
                        if prop.get("type") == "object"
                    },
                },
            },
        }
    return {"responses": responses, "openapi_extra": extra_doc}


def list_operation(
    page: type[BaseModel], *extra_parameters: dict[str, Any], auth: str = MERCHANT_KEY, stripes: bool = True
) -> Any:
    """A list's parameters; ``stripes``: it takes ``ending_before`` and ``created`` (the admin's do not)."""
    paging = [LIMIT, STARTING_AFTER, *([ENDING_BEFORE, *CREATED] if stripes else [])]
    return operation(page, auth=auth, parameters=[*paging, *extra_parameters])


def complete_schema(app: FastAPI) -> None:
    """Add the two keys as bearer schemes (each route names the one it takes); drop the 422 FastAPI
    documents for its own parameter validation (the API answers that in the error envelope, as a 400) and its
    JSON placeholder beside a text answer (``/metrics``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    responses = op.get("responses", {})
                    if "HTTPValidationError" in str(responses.get("422", {}).get("content")):
                        del responses["422"]
                    ok = responses.get("200", {}).get("content", {})
                    if "text/plain" in ok and ok.get("application/json") == {"schema": {}}:
                        del ok["application/json"]  # FastAPI's placeholder beside a text answer
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            components["securitySchemes"] = {
                MERCHANT_KEY: {"type": "http", "scheme": "bearer", "description": "a merchant's key"},
                ADMIN_KEY: {"type": "http", "scheme": "bearer", "description": "PAYRAY_ADMIN_KEY"},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
