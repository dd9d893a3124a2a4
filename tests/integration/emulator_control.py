"""The PSP emulator's control routes (``/_emulator/…``) from a test: faults, the clock, webhooks."""

from __future__ import annotations

from typing import Any

import httpx


def control(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.request(method, base + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
