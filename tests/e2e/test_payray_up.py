"""The README's front door: ``payray up`` on the embedded defaults, as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.loopback import free_port
from tests.e2e.running_up import RunningUp


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "payray-home"


def test_payray_up_serves_charges_and_keeps_data_across_restarts(home: Path) -> None:
    port = free_port()
    first = RunningUp(home, port)
    try:
        first.wait_until_up()
        url, key = first.fields["url"], first.fields["demo merchant key"]
        assert url == f"http://127.0.0.1:{port}"
        assert first.fields["admin key"].startswith("sk_admin_")
        sign_in = httpx.get(first.fields["ops page"], timeout=60)
        assert sign_in.status_code == 200 and 'action="/dashboard/login"' in sign_in.text
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
        charge = httpx.post(
            f"{url}/v1/charges",
            data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"},
            headers=headers,
            timeout=60,
        )
        assert charge.status_code == 200, charge.text
        verify = subprocess.run(
            [sys.executable, "-m", "ops.cli", "verify"],
            env={**os.environ, "PAYRAY_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        code = first.interrupt()
    assert code == 0, "".join(first.output)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

    second = RunningUp(home, port)
    try:
        second.wait_until_up()
        assert second.fields["demo merchant key"] == key
        again = httpx.get(
            f"{url}/v1/charges/{charge.json()['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        assert again.status_code == 200 and again.json()["status"] == "succeeded"
        replay = httpx.post(
            f"{url}/v1/charges",
            data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"},
            headers=headers,
            timeout=60,
        )
        assert replay.headers["Idempotent-Replayed"] == "true" and replay.content == charge.content
    finally:
        assert second.interrupt() == 0, "".join(second.output)
