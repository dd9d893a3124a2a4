"""Postgres and Redis restarted under a running process, as ``payray chaos`` restarts them: what a process
holds across the restart still works afterwards. Each test runs its own embedded server, to restart it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from ops.embedded import EmbeddedPostgres, EmbeddedRedis
from payray.settings import Settings
from serve_app.workers.schedules import ServiceSchedule

pytestmark = pytest.mark.integration


class Idle(ServiceSchedule):
    """A scheduled worker that does nothing on its own: only what the test asks of its parts."""

    async def _forever(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """An embedded Postgres of the test's own, and its URL."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    try:
        yield server, url
    finally:
        server.stop()


def test_a_scheduled_worker_outlives_a_postgres_restart(
    postgres: tuple[EmbeddedPostgres, str], tmp_path: Path
) -> None:
    """Found by ``payray chaos``: the day's reconciliation answered 503 after Postgres restarts, its
    scheduler's idle pooled connection broken. Its pool now tries a connection before lending it."""
    server, url = postgres
    worker = Idle(Settings.from_env({}).with_(home=tmp_path, database_url=url))

    async def query() -> int:
        parts = await worker._parts()
        async with parts.pool.connection() as conn:
            row = await (await conn.execute("SELECT 1")).fetchone()
        assert row is not None
        return int(row[0])

    async def scenario() -> None:
        parts = await worker._parts()
        try:
            assert await query() == 1
            server.restart()
            assert await query() == 1  # the broken connection is replaced, not lent
        finally:
            await parts.pool.close(timeout=5)

    asyncio.run(scenario())


def test_postgres_restarts_as_a_crash_and_keeps_what_was_committed(
    postgres: tuple[EmbeddedPostgres, str],
) -> None:
    server, url = postgres
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1)")
    server.restart()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]


def test_redis_restarts_empty_on_the_same_socket(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        client.set("key", "value")
        server.restart()
        assert client.get("key") is None  # nothing kept, as a Redis without persistence
        client.set("key", "again")  # the same URL reaches the new server
        assert client.get("key") == b"again"
        client.close()
    finally:
        server.stop()


def test_the_embedded_redis_is_a_cache_that_never_refuses_writes(tmp_path: Path) -> None:
    """It takes no snapshots (a failed one would make Redis answer MISCONF to every write) and would keep
    taking writes even if one failed."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("stop-writes-on-bgsave-error") == {"stop-writes-on-bgsave-error": "no"}
        client.set("key", "value")
        client.close()
    finally:
        server.stop()
    assert not (tmp_path / "redis" / "redis.rdb").exists()  # nothing written on the way out either
