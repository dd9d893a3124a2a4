"""``payray up`` as a new user runs it: a child process on a fresh PAYRAY_HOME, read line by line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 180
FIELD = r"(admin key|demo merchant key|demo merchant|Ray dashboard|ops page|PSP):\s+(\S+)"


class RunningUp:
    def __init__(self, home: Path, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        """``payray up --port PORT *args`` on the embedded defaults, but for what ``env`` sets."""
        unset = ("PAYRAY_", "STRIPE_", "RAY_ADDRESS")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
        clean.update(env or {})
        clean["PAYRAY_HOME"] = str(home)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "up", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean,
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
            if match := re.search(FIELD, line):
                self.fields[match.group(1)] = match.group(2)
            if match := re.search(r"RAY_ADDRESS=(\S+)", line):
                self.fields["ray address"] = match.group(1)
            if match := re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", line):
                self.fields["ray token"] = match.group(1)
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
