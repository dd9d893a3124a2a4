"""Versioned schema migrations: numbered SQL files applied once each, in order, under an advisory lock."""

from __future__ import annotations

import re
from importlib import resources

import psycopg

MIGRATION_LOCK_ID = 0x7061797261  # "payra": any constant shared by every migrator
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

CREATE_TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def available_migrations() -> list[tuple[int, str, str]]:
    """``(version, file name, SQL)`` for every migration shipped in ``ledger/migrations``, sorted."""
    found = []
    for item in resources.files("ledger.migrations").iterdir():
        match = _NAME.match(item.name)
        if match:
            found.append((int(match.group(1)), item.name, item.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run concurrently from many processes."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(CREATE_TRACKING_TABLE)
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in available_migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                    )
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied
