"""A merchant's webhook endpoint for tests: a real HTTP server on an ephemeral loopback port that records
every POST and answers as its plan says (a status per request, and how long to take)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    body: bytes
    signature: str
    at: float


@dataclass
class Receiver:
    url: str
    #: the status to answer the n-th request (from 1) with, and how many seconds to wait first
    plan: Callable[[int], tuple[int, float]] = lambda n: (200, 0.0)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.receiver.lock:
            signature = self.headers.get("Stripe-Signature", "")
            self.receiver.received.append(Received(body, signature, time.time()))
            n = len(self.receiver.received)
        status, delay_s = self.receiver.plan(n)
        if delay_s:
            time.sleep(delay_s)
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except OSError:  # the sender gave up waiting
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on 127.0.0.1 (``plan`` as ``Receiver``'s); all stop after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(plan: Callable[[int], tuple[int, float]] | None = None) -> Receiver:
        receiver = Receiver(url="")
        if plan is not None:
            receiver.plan = plan
        handler = type("Handler", (_Handler,), {"receiver": receiver})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        return receiver

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
