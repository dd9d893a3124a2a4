"""Turn a raw request body (JSON, or a form as Stripe's SDKs send it) into a validated model."""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from payray.errors import InvalidRequest, PayloadTooLarge
from payray.forms import FormDecodeError, decode_form
from serve_app.wire.schemas import validation_param

MAX_BODY_BYTES = 64 * 1024
_FORM_INTEGER = re.compile(r"^-?\d{1,18}$")

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"invalid JSON number {name}", code="parameter_invalid")


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}", code="invalid_json") from None


def _is_integer(annotation: Any) -> bool:
    """``int``, also when constrained (``Annotated[int, …]``) or optional (``… | None``)."""
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_integer(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_integer(members[0])
    return False


def _integers_from_form(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Form values are strings; the model's integer fields accept decimal strings from a form only."""
    for name, field in model.model_fields.items():
        value = data.get(name)
        if _is_integer(field.annotation) and isinstance(value, str) and _FORM_INTEGER.match(value):
            data[name] = int(value)
    return data


def parse_body(model: type[M], raw: bytes, content_type: str | None) -> M:
    """Validate ``raw`` against ``model``; any problem is an ``InvalidRequest`` naming the field."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    media_type = (content_type or "").split(";")[0].strip().lower()
    data: Any
    if media_type == "application/x-www-form-urlencoded":
        try:
            data = _integers_from_form(model, decode_form(raw))
        except FormDecodeError as exc:
            raise InvalidRequest(str(exc), code="invalid_form") from None
    elif media_type in ("application/json", "") or media_type.endswith("+json"):
        data = _parse_json(raw) if raw.strip() else {}
    else:
        raise InvalidRequest(
            f"unsupported content type {media_type!r}; send application/json or "
            "application/x-www-form-urlencoded",
            code="unsupported_content_type",
        )
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", code="parameter_invalid")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        param = validation_param(list(errors))  # type: ignore[arg-type]
        code = (
            "parameter_unknown"
            if first["type"] == "extra_forbidden"
            else ("parameter_missing" if first["type"] == "missing" else "parameter_invalid")
        )
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        raise InvalidRequest(message, code=code, param=param) from None
