"""Request fingerprints: what makes two requests under one idempotency key "the same request"."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(body: Any) -> bytes:
    """Key order and whitespace never change a fingerprint; values and types do."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_fingerprint(method: str, path: str, body: Any) -> bytes:
    """SHA-256 of the method, the path and the canonical JSON of the validated body."""
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b"\n")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical_json(body))
    return digest.digest()
