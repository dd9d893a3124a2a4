"""Stripe-shaped object ids; random (not seeded) so ids never repeat across restarts of a journaled store."""

from __future__ import annotations

import os
import string

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    n = int.from_bytes(os.urandom(length), "big")
    chars = []
    for _ in range(length):
        n, r = divmod(n, 62)
        chars.append(_ALPHABET[r])
    return prefix + "_" + "".join(chars)
