"""Which characters a string parameter may hold: no control characters, so none reach storage or logs.

Postgres refuses NUL in text, terminals act on escape sequences, and a log line split by a line feed can be
forged; so identifiers (ids, parameter names, metadata keys) hold no control character at all, and free text
(a description, a metadata value, a note) only tab, line feed and carriage return. Control characters are
Unicode's ``Cc`` (C0, DEL and C1); lone surrogates (``Cs``) are refused too, since they cannot be encoded as
UTF-8 and so cannot be stored.
"""

from __future__ import annotations

import re

_IN_IDENTIFIER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_IN_FREE_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def forbidden_character(value: str, *, free_text: bool) -> str | None:
    """The first character ``value`` may not hold, or None; free text may hold tab, LF and CR."""
    found = (_IN_FREE_TEXT if free_text else _IN_IDENTIFIER).search(value)
    return found.group() if found else None


def describe(char: str) -> str:
    """``U+0000``: how an error message names a character without printing it."""
    return f"U+{ord(char):04X}"
