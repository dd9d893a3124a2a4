"""The API's TLS front: HAProxy terminating HTTPS on the API port and forwarding to Serve on 127.0.0.1.

Serve's own TLS options do not work with its HAProxy ingress, and its replicas' ports speak plain HTTP, so
TLS ends in a process of its own in front of Serve: the HAProxy binary payray already runs (it ships with
``ray[serve]``). It serves TLS 1.2 and 1.3 with forward-secret AEAD ciphers only. With a client CA it
requires a client certificate signed by that CA (mutual TLS from a load balancer) and refuses everything
else during the handshake. It replaces ``X-Forwarded-For`` with the peer's address, so the rate limits
count the client and a client cannot name another.

A new certificate is loaded through HAProxy's runtime API: handshakes after it use the new
one, and no connection or request in flight is touched. The process is watched and started again if it
exits, so losing it costs only the requests it held.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.loopback import LOOPBACK
from ops.private_files import write_private
from ops.tls import KeyPair

#: TLS 1.2's forward-secret AEAD suites (Mozilla's "intermediate" list); TLS 1.3's are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#: Under ``$PAYRAY_HOME/tls/``: the front's configuration, served file and record.
FRONT_DIR = "front"
#: In the front's directory while it runs: where its runtime API is, for ``payray tls rotate``.
RECORD_FILE = "front.json"
#: Unix socket paths are limited to 107 bytes.
MAX_SOCKET_PATH = 100
START_TIMEOUT_S = 10.0


class FrontError(RuntimeError):
    """The TLS front could not start or refused a runtime command."""


def front_config(
    *,
    listen: tuple[str, int],
    upstream_port: int,
    certificate: Path,
    admin_socket: Path,
    client_ca: Path | None = None,
) -> str:
    """HAProxy's configuration for the front: one HTTPS frontend, one plain backend on loopback."""
    host, port = listen
    bind = f"bind {host}:{port} ssl crt {certificate} alpn http/1.1"
    if client_ca is not None:
        bind += f" ca-file {client_ca} verify required"
    return "\n".join(
        [
            "global",
            f"    stats socket {admin_socket} mode 600 level admin",
            "    stats timeout 30s",
            "    maxconn 4096",
            "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
            f"    ssl-default-bind-ciphers {TLS12_CIPHERS}",
            f"    ssl-default-bind-ciphersuites {TLS13_SUITES}",
            "defaults",
            "    mode http",
            "    timeout connect 5s",
            "    timeout http-request 15s",
            "    timeout client 90s",
            "    timeout http-keep-alive 90s",
            "    timeout server 120s",
            "    retry-on conn-failure",
            "    retries 3",
            "frontend api",
            f"    {bind}",
            "    http-request set-header X-Forwarded-For %[src]",
            "    http-request set-header X-Forwarded-Proto https",
            "    default_backend serve",
            "backend serve",
            "    http-reuse always",
            f"    server serve {LOOPBACK}:{upstream_port}",
            "",
        ]
    )


@dataclass
class TlsFront:
    """One HAProxy process serving HTTPS on ``host:port`` for Serve's plain port ``upstream_port``."""

    binary: str
    directory: Path
    host: str
    port: int
    upstream_port: int
    certificate: KeyPair
    client_ca: Path | None = None
    say: Callable[[str], None] = print
    _process: subprocess.Popen[bytes] | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _socket_dir: Path | None = None

    @property
    def pem(self) -> Path:
        """The certificate and key HAProxy serves, in one file (owner-only)."""
        return self.directory / "front.pem"

    @property
    def admin_socket(self) -> Path:
        socket_path = self.directory / "front.sock"
        if len(str(socket_path)) <= MAX_SOCKET_PATH:
            return socket_path
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pr-tls-", dir="/tmp"))
        return self._socket_dir / "front.sock"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> str:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.pem, self.certificate.combined())
        config = front_config(
            listen=(self.host, self.port),
            upstream_port=self.upstream_port,
            certificate=self.pem,
            admin_socket=self.admin_socket,
            client_ca=self.client_ca,
        )
        (self.directory / "front.cfg").write_text(config)
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(self.directory / "front.cfg")], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise FrontError(f"HAProxy refused the TLS front's configuration:\n{check.stderr[-2000:]}")
        self._launch()
        self._watcher = threading.Thread(target=self._watch, name="tls-front-watch", daemon=True)
        self._watcher.start()
        record = {"url": self.url, "admin_socket": str(self.admin_socket), "certificate": str(self.pem)}
        (self.directory / RECORD_FILE).write_text(json.dumps(record))
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / RECORD_FILE).unlink()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                self.admin_socket.unlink()
                self._socket_dir.rmdir()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def rotate(self, certificate: KeyPair) -> None:
        """Serve ``certificate`` from the next handshake on (see :func:`replace_certificate`)."""
        replace_certificate(self.admin_socket, self.pem, certificate)
        self.certificate = certificate

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.admin_socket.unlink()
        self._process = subprocess.Popen(
            [self.binary, "-db", "-f", str(self.directory / "front.cfg")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.host, self.port):
            if self._process.poll() is not None:
                raise FrontError(f"the TLS front exited on start (code {self._process.returncode})")
            if time.monotonic() > deadline:
                raise FrontError(f"the TLS front did not listen on {self.host}:{self.port} in time")
            time.sleep(0.02)

    def _watch(self) -> None:
        """Start the front again if it dies: the API port must not stay dark."""
        while not self._stopping.is_set():
            process = self._process
            if process is None or process.poll() is None:
                time.sleep(0.1)
                continue
            if self._stopping.is_set():
                return
            self.say(f"warning: the TLS front exited (code {process.returncode}); starting it again")
            try:
                self._launch()
            except FrontError as exc:
                self.say(f"warning: {exc}")
                time.sleep(1)


def running_front(directory: Path) -> dict[str, str] | None:
    """What a front running from ``directory`` recorded (its URL, runtime API socket and served file)."""
    try:
        record: dict[str, str] = json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record


def replace_certificate(admin_socket: Path, pem: Path, certificate: KeyPair) -> None:
    """Load ``certificate`` into the running front whose served file is ``pem``, and keep it in that file for
    a restart. Connections already open keep theirs; nothing in flight is dropped."""
    _transaction(admin_socket, "ssl cert", pem, certificate.combined().decode())
    write_private(pem, certificate.combined())


def _transaction(admin_socket: Path, kind: str, path: Path, payload: str) -> None:
    """``set <kind>`` then ``commit <kind>`` on the runtime API: both or neither take effect."""
    answer = command(admin_socket, f"set {kind} {path} <<\n{payload.strip()}\n\n")
    if "transaction created" not in answer.lower() and "transaction updated" not in answer.lower():
        command(admin_socket, f"abort {kind} {path}")
        raise FrontError(f"HAProxy refused the new {kind.split()[-1]}: {answer.strip()}")
    answer = command(admin_socket, f"commit {kind} {path}")
    if "success" not in answer.lower():
        raise FrontError(f"HAProxy did not commit the new {kind.split()[-1]}: {answer.strip()}")


def command(admin_socket: Path, line: str, timeout_s: float = 5.0) -> str:
    """One command on HAProxy's runtime API, and its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(admin_socket))
        sock.sendall(line.encode() + (b"" if line.endswith("\n") else b"\n"))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False
