"""Ways to run the emulator from tests and tools: a subprocess, or a server in the current event loop."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from aiohttp import web

from psp.emulator.app import build_app

READY_PREFIX = "PSP emulator listening on "
_REPO_ROOT = Path(__file__).resolve().parents[2]


class EmulatorProcess:
    """``python -m psp.emulator`` as a child process; ``start()`` returns the base URL once listening."""

    def __init__(
        self,
        data_dir: Path | None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.api_key = api_key
        self.startup_timeout_s = startup_timeout_s
        self.url: str | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> str:
        if self._proc is not None:
            raise RuntimeError("the emulator is already running")
        argv = [sys.executable, "-m", "psp.emulator", "--host", self.host, "--port", str(self.port)]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        if self.api_key is not None:
            argv += ["--api-key", self.api_key]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="psp-emulator-stdout", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError("the PSP emulator did not start in time")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self._proc.wait()
                self._proc = None
                raise RuntimeError(f"the PSP emulator exited with code {code} before listening")
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmulatorServer:
    """The emulator inside the caller's event loop, for async tests that want no subprocess."""

    def __init__(
        self, data_dir: Path | None = None, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
    ) -> None:
        self.app = build_app(data_dir, api_key=api_key)
        self.host = host
        self.port = port
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
