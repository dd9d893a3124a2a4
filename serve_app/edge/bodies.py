"""Turn a raw request body (JSON, or a form as Stripe's SDKs send it) into a validated model.

Every body passes the same gates, in order: size (while streaming), nesting depth, parameter count, the
characters of every name and string value, then the model; the first gate that fails names the parameter.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from payray.errors import InvalidRequest, PayloadTooLarge
from payray.forms import FormDecodeError, decode_pairs, split_key
from payray.text import describe, forbidden_character
from serve_app.wire.limits import MAX_BODY_BYTES, MAX_DEPTH, MAX_PARAMS, json_depth_exceeds
from serve_app.wire.schemas import validation_param

_FORM_INTEGER = re.compile(r"^-?\d{1,18}$")

M = TypeVar("M", bound=BaseModel)


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")


async def read_body(request: Request) -> bytes:
    """The body, read chunk by chunk and abandoned at the cap (a declared length over it is not read at all),
    so an oversized body is never buffered whole, nor HMAC'd, whether or not it says how long it is."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"invalid JSON number {name}", code="parameter_invalid")


def _parse_json(raw: bytes) -> Any:
    if json_depth_exceeds(raw):
        raise InvalidRequest(f"the body nests deeper than {MAX_DEPTH} levels", code="parameter_invalid")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}", code="invalid_json") from None


def _parse_form(raw: bytes) -> dict[str, Any]:
    """Bracket notation (``metadata[order]=42``), each key's depth checked before the decoder nests it."""
    try:
        text = raw.decode("utf-8")
        if text.count("&") >= MAX_PARAMS:
            raise _too_many()
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
        for key, _ in pairs:
            parts = split_key(key)
            if len(parts) > MAX_DEPTH:
                raise InvalidRequest(
                    f"{parts[0]}: form keys nest at most {MAX_DEPTH} levels", param=_name(parts[0])
                )
        return decode_pairs(pairs)
    except (FormDecodeError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed form body: {exc}", code="invalid_form") from None


def _too_many() -> InvalidRequest:
    return InvalidRequest(f"a request carries at most {MAX_PARAMS} parameters", code="parameter_invalid")


def _name(key: str) -> str | None:
    """A parameter name fit to echo in ``param``: None when it holds a character names may not."""
    return key if forbidden_character(key, free_text=False) is None else None


def screen(data: Any) -> None:
    """Walk the decoded body once: at most ``MAX_PARAMS`` values, no control character in any name, none but
    tab, LF and CR in a string value (see ``payray.text``). Depth is already bounded, so recursion is too."""
    count = 0

    def walk(node: Any, path: str | None) -> None:
        nonlocal count
        if isinstance(node, dict):
            items: list[tuple[Any, Any]] = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            count += 1
            if count > MAX_PARAMS:
                raise _too_many()
            if isinstance(node, str):
                bad = forbidden_character(node, free_text=True)
                if bad is not None:
                    raise InvalidRequest(f"{path} holds the control character {describe(bad)}", param=path)
            return
        if not items:
            count += 1
        for key, child in items:
            if isinstance(key, str):
                bad = forbidden_character(key, free_text=False)
                if bad is not None:
                    where = f"a parameter name in {path}" if path else "a parameter name"
                    raise InvalidRequest(f"{where} holds the control character {describe(bad)}", param=path)
            walk(child, f"{path}[{key}]" if path else str(key))

    walk(data, None)


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
        raise _too_large()
    media_type = (content_type or "").split(";")[0].strip().lower()
    data: Any
    if media_type == "application/x-www-form-urlencoded":
        data = _parse_form(raw)
        screen(data)
        data = _integers_from_form(model, data)
    elif media_type in ("application/json", "") or media_type.endswith("+json"):
        data = _parse_json(raw) if raw.strip() else {}
        screen(data)
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
