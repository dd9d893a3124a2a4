"""Stripe's idempotency: per (API key, Idempotency-Key), the first answer is replayed for 24 hours.

The property payray relies on: a request retried after a lost reply must not charge twice. Claims live only in
memory (an in-flight request dies with the process); finished answers go through the journaled store. The 24 h
run on wall time, not the emulator's clock: pinning the clock to a future settlement day must not expire keys.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psp.emulator.errors import StripeError
from psp.emulator.store import IDEMPOTENCY_TTL_S, Store

MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([method.upper(), path, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    original_request: str | None


@dataclass(frozen=True)
class Proceed:
    """The caller owns the key until it calls ``finish`` or ``abandon``."""


class IdempotencyTable:
    def __init__(self, store: Store, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall
        self._in_flight: dict[tuple[str, str], str] = {}

    def begin(self, scope: str, key: str, fp: str) -> Replay | Proceed:
        """Replay a finished answer, claim the key, or raise 400 (other params) / 409 (still in flight)."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise StripeError(
                400,
                "idempotency_error",
                "Idempotency keys must be 1 to 255 characters long.",
                code="idempotency_key_invalid",
                saved=False,
            )
        now = int(self._wall())
        self._store.purge_idempotency(now)
        record = self._store.idempotent(scope, key)
        if record is not None and record["at"] > now - IDEMPOTENCY_TTL_S:
            if record["fingerprint"] != fp:
                raise self._mismatch(key)
            return Replay(record["status"], record["body"], record.get("request_id"))
        claimed = self._in_flight.get((scope, key))
        if claimed is not None:
            if claimed != fp:
                raise self._mismatch(key)
            raise StripeError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this idempotent key. Please try again "
                "later.",
                code="idempotency_key_in_use",
                saved=False,
            )
        self._in_flight[(scope, key)] = fp
        return Proceed()

    def finish(self, scope: str, key: str, fp: str, status: int, body: str, request_id: str | None) -> None:
        self._in_flight.pop((scope, key), None)
        record = {
            "fingerprint": fp,
            "status": status,
            "body": body,
            "at": int(self._wall()),
            "request_id": request_id,
        }
        self._store.save_idempotent(scope, key, record)

    def abandon(self, scope: str, key: str) -> None:
        self._in_flight.pop((scope, key), None)

    def clear_in_flight(self) -> None:
        self._in_flight.clear()

    @staticmethod
    def _mismatch(key: str) -> StripeError:
        return StripeError(
            400,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were first used "
            f"with. Try using a key other than '{key}' if you meant to execute a different request.",
            code="idempotency_key_reused",
            saved=False,
        )
