"""Prefixed, sortable-enough random ids (``ch_…``, ``acct_…``) and API key generation and hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_api_key() -> str:
    return "sk_test_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    """Keys are stored as SHA-256 digests: high-entropy secrets need no slow hash, only no plaintext."""
    return hashlib.sha256(key.encode()).digest()


def keys_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
