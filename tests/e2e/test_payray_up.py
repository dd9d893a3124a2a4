"""The README's front door: ``payray up`` on the embedded defaults, as a new user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.stack import free_port

START_TIMEOUT_S = 180


class RunningUp:
    def __init__(self, home: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYRAY_", "STRIPE_", "RAY_ADDRESS"))}
        env["PAYRAY_HOME"] = str(home)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "up", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.output: list[str] = []
        self.fields: dict[str, str] = {}

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if match := re.search(r"payray is up at (\S+)", line):
                self.fields["url"] = match.group(1)
            if match := re.search(r"(admin key|demo merchant key|demo merchant):\s+(\S+)", line):
                self.fields[match.group(1)] = match.group(2)
            if "Ctrl-C stops" in line:
                return
        raise AssertionError("payray up did not come up:\n" + "".join(self.output))

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            rest, _ = self.process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self.output.append(rest)
        return self.process.returncode


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
