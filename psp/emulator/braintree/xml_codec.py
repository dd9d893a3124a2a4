"""Braintree's XML as plain data: the SDK's generator and parser conventions, both ways, no IO.

Requests come with underscored tags (the SDK does not dasherize) and responses go out dasherized, as the
gateway writes them; ``type="array|integer|boolean|datetime|date"`` and ``nil="true"`` carry the types.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from xml.sax.saxutils import escape

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_DEPTH = 32


class Repeated(list[Any]):
    """Items written as sibling elements named after the key, without ``type="array"``: how the gateway
    lists a collection's ``<transaction>`` entries."""


class XmlDecodeError(ValueError):
    """A body that is not the XML document the gateway expects."""


def decode(body: bytes | str) -> tuple[str, Any]:
    """The root tag (underscored) and its value; an empty body is ``("", {})``."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XmlDecodeError(f"the body is not UTF-8: {exc}") from None
    if not body.strip():
        return "", {}
    if "<!DOCTYPE" in body or "<!ENTITY" in body:
        raise XmlDecodeError("document type declarations are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise XmlDecodeError(f"malformed XML: {exc}") from None
    return _name(root.tag), _value(root, 0)


def _name(tag: str) -> str:
    return tag.replace("-", "_")


def _value(node: ET.Element, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise XmlDecodeError("the document nests too deeply")
    kind = node.get("type")
    children = list(node)
    if kind == "array":
        return [_value(child, depth + 1) for child in children]
    if children:
        out: dict[str, Any] = {}
        for child in children:
            out[_name(child.tag)] = _value(child, depth + 1)
        return out
    if node.get("nil") == "true":
        return None
    text = (node.text or "").strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise XmlDecodeError(f"<{node.tag}> is not an integer: {text!r}") from None
    if kind == "boolean":
        return text in ("true", "1")
    return text


def encode(root: str, value: Any) -> bytes:
    """One document: ``root`` holding ``value`` (dicts, lists, str, int, bool, Decimal, dates, None).

    A dict's ``"@"`` entry holds the element's attributes; a ``Repeated`` value becomes sibling elements."""
    return (DECLARATION + _node(root, value)).encode("utf-8")


def _children(key: str, value: Any) -> str:
    if key == "@":
        return ""
    if isinstance(value, Repeated):
        return "".join(_node(key, item) for item in value)
    return _node(key, value)


def _tag(name: str) -> str:
    return name.replace("_", "-")


def _node(name: str, value: Any) -> str:
    tag = _tag(name)
    if value is None:
        return f'<{tag} nil="true"/>'
    if isinstance(value, bool):
        return f'<{tag} type="boolean">{"true" if value else "false"}</{tag}>'
    if isinstance(value, int):
        return f'<{tag} type="integer">{value}</{tag}>'
    if isinstance(value, datetime):
        text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f'<{tag} type="datetime">{text}</{tag}>'
    if isinstance(value, date):
        return f'<{tag} type="date">{value.isoformat()}</{tag}>'
    if isinstance(value, dict):
        inner = "".join(_children(key, item) for key, item in value.items())
        attributes = "".join(f' {k}="{escape(v)}"' for k, v in value.get("@", {}).items())
        return f"<{tag}{attributes}>{inner}</{tag}>"
    if isinstance(value, list | tuple):
        item_tag = _singular(name)
        inner = "".join(_node(item_tag, item) for item in value)
        return f'<{tag} type="array">{inner}</{tag}>'
    if isinstance(value, str | Decimal):
        return f"<{tag}>{escape(str(value))}</{tag}>"
    raise TypeError(f"cannot encode {type(value).__name__} as XML")


def _singular(name: str) -> str:
    """The gateway names array items after their list (``refund-ids`` holds ``item``s, ``records`` holds
    ``record``s); the SDK's parser ignores item tags, so only readability depends on this."""
    if name.endswith("_ids") or not name.endswith("s"):
        return "item"
    return name[:-1]
