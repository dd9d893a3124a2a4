"""Ways to run the emulator from tests and tools: a subprocess, or a server in the current event loop.

Either serves HTTPS when given a certificate and its key (``https://`` base URL), so clients exercise their
real certificate verification; ``ca_bundle`` names extra CAs its webhooks trust (a payray on HTTPS whose
certificate a local CA signed).
"""

from __future__ import annotations

import os
import queue
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from aiohttp import web

from psp.emulator.app import build_app
from psp.emulator.runtime import EMULATOR

READY_PREFIX = "PSP emulator listening on "
_REPO_ROOT = Path(__file__).resolve().parents[2]


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The context of an HTTPS listener presenting ``cert`` (PEM, with any intermediates after it) and
    ``key``; raises ``OSError`` (``ssl.SSLError`` among them) for a file that is missing or does not fit."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class EmulatorProcess:
    """``python -m psp.emulator`` as a child process; ``start()`` returns the base URL once listening."""

    def __init__(
        self,
        data_dir: Path | None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        startup_timeout_s: float = 20.0,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("HTTPS takes both a certificate and its key")
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.api_key = api_key
        self.startup_timeout_s = startup_timeout_s
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.ca_bundle = ca_bundle
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
        if self.tls_cert is not None and self.tls_key is not None:
            argv += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if self.ca_bundle is not None:
            argv += ["--ca-bundle", str(self.ca_bundle)]
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
        self,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca_bundle: Path | None = None,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("HTTPS takes both a certificate and its key")
        self.app = build_app(data_dir, api_key=api_key)
        # the webhook sender reads it when its first delivery opens a session, so setting it here is in time
        self.app[EMULATOR].webhooks.ca_bundle = str(ca_bundle) if ca_bundle is not None else None
        self.host = host
        self.port = port
        self.url: str | None = None
        self._tls = (
            server_ssl_context(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        )
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._tls)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"{'https' if self._tls else 'http'}://{host}:{port}"
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
