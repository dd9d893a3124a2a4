"""Typed reading of decoded form parameters, with Stripe's error for each way a parameter can be wrong."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psp.emulator.errors import StripeError, invalid, missing

MAX_AMOUNT = 99_999_999


def reject_unknown(params: dict[str, Any], allowed: Iterable[str]) -> None:
    known = set(allowed) | {"expand"}
    for name in params:
        if name not in known:
            raise invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def opt_str(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {name}", param=name)
    return value


def req_str(params: dict[str, Any], name: str) -> str:
    value = opt_str(params, name)
    if value is None:
        raise missing(name)
    return value


def opt_int(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid(f"Invalid integer: {value}", param=name)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise invalid(f"Invalid integer: {value}", param=name)


def amount(params: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = opt_int(params, name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if value < 1:
        raise invalid("This value must be greater than or equal to 1.", param=name)
    if value > MAX_AMOUNT:
        raise invalid(f"Amount must be no more than {MAX_AMOUNT}.", param=name)
    return value


def opt_bool(params: dict[str, Any], name: str, default: bool = False) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise invalid(f"Invalid boolean: {value}", param=name)


def currency(params: dict[str, Any], name: str = "currency") -> str:
    value = req_str(params, name).lower()
    if len(value) != 3 or not value.isalpha():
        raise invalid(f"Invalid currency: {value}.", param=name)
    return value


def choice(params: dict[str, Any], name: str, options: Iterable[str], default: str | None) -> str | None:
    value = opt_str(params, name)
    if value is None:
        return default
    opts = tuple(options)
    if value not in opts:
        raise invalid(f"Invalid {name}: must be one of {', '.join(opts)}", param=name)
    return value


def metadata(params: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """Merge ``metadata[...]`` into ``base``: an empty value unsets a key, as in Stripe."""
    result = dict(base or {})
    raw = params.get("metadata")
    if raw is None or raw == "":
        return result if raw is None else {}
    if not isinstance(raw, dict):
        raise invalid("Invalid metadata: must be a hash", param="metadata")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise invalid(f"Invalid metadata value for {key}", param=f"metadata[{key}]")
        if len(key) > 40:
            raise invalid("Metadata keys can have up to 40 characters.", param=f"metadata[{key}]")
        if len(value) > 500:
            raise invalid("Metadata values can have up to 500 characters.", param=f"metadata[{key}]")
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    if len(result) > 50:
        raise invalid("You can have up to 50 metadata keys.", param="metadata")
    return result


def expand_paths(params: dict[str, Any]) -> list[str]:
    raw = params.get("expand")
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        return list(raw)
    raise invalid("Invalid expand: must be an array of strings", param="expand")


def card_error(message: str, code: str, param: str | None = None) -> StripeError:
    return StripeError(402, "card_error", message, code=code, param=param)
