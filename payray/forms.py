"""Decode form bodies as Stripe's SDKs encode them: ``metadata[order]=42``, ``expand[0]=customer``.

Values stay strings: a form carries no types, so typing is the validator's job.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


class FormDecodeError(ValueError):
    """The body is not a well-formed bracket-notation form."""


def _split_key(key: str) -> list[str]:
    head, bracket, rest = key.partition("[")
    if not head:
        raise FormDecodeError(f"malformed form key {key!r}")
    if not bracket:
        return [head]
    rest = "[" + rest
    parts = _SEGMENT.findall(rest)
    if "".join(f"[{p}]" for p in parts) != rest:
        raise FormDecodeError(f"malformed form key {key!r}")
    return [head, *parts]


def _listify(node: Any) -> Any:
    """Dicts whose keys are exactly 0..n-1 (or appended with ``[]``) become lists."""
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        indices = sorted(int(k) for k in converted)
        if indices == list(range(len(indices))):
            return [converted[str(i)] for i in indices]
    return converted


def decode_form(body: bytes | str) -> dict[str, Any]:
    """Parse an ``application/x-www-form-urlencoded`` body into nested dicts and lists of strings."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormDecodeError(f"malformed form body: {exc}") from None
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = _split_key(key)
        node = root
        for i, part in enumerate(parts):
            if part == "":
                part = str(len(node))  # ``tags[]=a&tags[]=b`` appends
            if i == len(parts) - 1:
                if part in node:
                    raise FormDecodeError(f"form key {key!r} given twice")
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormDecodeError(f"form key {key!r} conflicts with an earlier value")
            node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result
