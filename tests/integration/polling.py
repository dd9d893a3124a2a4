"""Waiting for something asynchronous (a webhook, a relay, a restart) by its condition, never by the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


def until(probe: Callable[[], Any], timeout_s: float = 60.0, what: str = "the condition") -> Any:
    """Poll ``probe`` until it returns something truthy, and return that; an HTTP error counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} never came within {timeout_s} s"
        time.sleep(0.1)
