"""Decode Stripe's bracket-notation forms (``metadata[order]=42``, ``expand[0]=x``) into nested dicts/lists.

Values stay strings: a form carries no types, so coercion belongs to the handler that knows the parameter.
Children of a ``metadata`` key always stay a dict, since merchants may use numeric metadata keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_KEEP_AS_DICT = frozenset({"metadata"})


class FormError(ValueError):
    """The form is not well-formed bracket notation."""


def split_key(key: str) -> list[str]:
    """``a[b][0]`` → ``["a", "b", "0"]``; ``a[]`` → ``["a", ""]`` (append)."""
    head, bracket, rest = key.partition("[")
    if not head:
        raise FormError(f"malformed form key {key!r}")
    if not bracket:
        return [head]
    rest = "[" + rest
    parts = _SEGMENT.findall(rest)
    if "".join(f"[{p}]" for p in parts) != rest:
        raise FormError(f"malformed form key {key!r}")
    return [head, *parts]


def _listify(node: Any, name: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v, k) for k, v in node.items()}
    if name in _KEEP_AS_DICT:
        return converted
    if converted and all(k.isdigit() for k in converted):
        indices = sorted(int(k) for k in converted)
        if indices == list(range(len(indices))) and len(indices) == len(converted):
            return [converted[str(i)] for i in indices]
    return converted


def decode_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Build the nested structure from (key, value) pairs in wire order."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = split_key(key)
        node = root
        for i, raw in enumerate(parts):
            part = str(len(node)) if raw == "" else raw
            if i == len(parts) - 1:
                if part in node:
                    raise FormError(f"form key {key!r} given twice")
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormError(f"form key {key!r} conflicts with an earlier value")
            node = child
    result = _listify(root, None)
    assert isinstance(result, dict)
    return result


def decode_form(body: bytes | str) -> dict[str, Any]:
    """Parse an ``application/x-www-form-urlencoded`` body or query string."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormError(f"malformed form body: {exc}") from None
    return decode_pairs(pairs)
