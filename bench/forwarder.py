"""A loopback TCP forwarder to one upstream port that can be switched to refusing connections.

It stands between payray and one PSP (Stripe's personality of the emulator) so that PSP alone can be made
unreachable the way a dead front door is: ``refuse()`` closes the listening socket, so every new connect gets
ECONNREFUSED and nothing is sent, and drops the connections already open (a client's pooled connection would
otherwise carry on regardless). ``accept()`` listens on the same port again. It runs its own event loop in a
thread, so the bench's load generator can switch it mid-run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from typing import Any

LOOPBACK = "127.0.0.1"
CHUNK = 1 << 16


class Forwarder:
    """Forwards each connection on ``host:port`` to ``upstream_host:upstream_port``, byte for byte."""

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK, host: str = LOOPBACK) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        #: connections accepted, and when the last ``refuse()`` closed the door (unix seconds)
        self.accepted = 0
        self.refused_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-forwarder", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Listen (on a free port the first time) and return the forwarder's base URL."""
        self._thread.start()
        self._call(self._listen())
        return self.url

    def refuse(self) -> float:
        """Stop listening and drop every open connection; returns when connects are refused (unix seconds)."""
        return float(self._call(self._refuse()))

    def accept(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._refuse())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._pipe, self.host, self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _refuse(self) -> float:
        if self._server is not None:
            self._server.close()  # the listening socket: connects are refused from here on
            self._server = None
        self.refused_at = time.time()
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()
        return self.refused_at

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._open.discard(end)
                end.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction until its end closes; then half-close the other side, as TCP would."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
