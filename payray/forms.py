"""Decode Stripe's bracket-notation forms (``metadata[order]=42``, ``expand[0]=x``) into nested dicts/lists.

One decoder for both ends of the wire: payray's API (form bodies as Stripe's SDKs send them) and the PSP
emulator (Stripe's own server side). Values stay strings: a form carries no types, so typing is the
validator's job. Children of a ``metadata`` key always stay a dict, since merchants may use numeric keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_KEEP_AS_DICT = frozenset({"metadata"})


class FormDecodeError(ValueError):
    """The body is not a well-formed bracket-notation form."""


def split_key(key: str) -> list[str]:
    """``a[b][0]`` → ``["a", "b", "0"]``; ``a[]`` → ``["a", ""]`` (append)."""
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


def _listify(node: Any, name: str | None) -> Any:
    """Dicts whose keys are exactly 0..n-1 (or appended with ``[]``) become lists, but never metadata."""
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
            part = str(len(node)) if raw == "" else raw  # ``tags[]=a&tags[]=b`` appends
            if i == len(parts) - 1:
                if part in node:
                    raise FormDecodeError(f"form key {key!r} given twice")
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormDecodeError(f"form key {key!r} conflicts with an earlier value")
            node = child
    # The top level is the body's parameters, by name: a body of ``0=x`` names a parameter "0", not a list.
    return {name: _listify(value, name) for name, value in root.items()}


def decode_form(body: bytes | str, *, strict: bool = True) -> dict[str, Any]:
    """Parse an ``application/x-www-form-urlencoded`` body or query string.

    ``strict`` refuses fields without ``=`` and empty fields (payray's API); Stripe's servers, and so the
    emulator, skip them.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=strict and bool(text), errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormDecodeError(f"malformed form body: {exc}") from None
    return decode_pairs(pairs)
