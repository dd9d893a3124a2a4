"""How much a request body may hold, in one place, and the cheap checks that run before any parsing.

Stripe's own limits are of the same order: metadata has at most 50 keys, nested objects go a few levels deep,
and no API call takes more than a few hundred parameters. The caps keep a hostile body from costing more than
a legitimate one: the size is checked while the body streams in (before it is buffered or HMAC'd), the depth
before ``json.loads`` or the form decoder recurse into it, and the parameter count before validation walks it.
"""

from __future__ import annotations

import re

#: API.md: bodies over 64 KiB are refused with 413.
MAX_BODY_BYTES = 64 * 1024
#: How deeply objects and lists (or bracketed form keys, ``a[b][c]``) may nest; payray's deepest is 2.
MAX_DEPTH = 20
#: How many values (leaves: strings, numbers, …, or form fields) a body may carry; a charge needs ~56.
MAX_PARAMS = 256

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when ``raw``'s arrays and objects nest deeper than ``limit``; strings are skipped, so a bracket
    inside one does not count. Linear and without recursion: it runs before ``json.loads`` would recurse."""
    depth = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, _BRACKETS):
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
