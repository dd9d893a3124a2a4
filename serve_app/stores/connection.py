"""A store's connection: the caller's own, inside its open transaction, or else one from the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool


@asynccontextmanager
async def on(pool: AsyncConnectionPool[Any], conn: AsyncConnection[Any] | None) -> AsyncIterator[Any]:
    """``conn`` if given (what is written joins its transaction), else a connection of ``pool`` (what is
    written commits when the block ends)."""
    if conn is not None:
        yield conn
        return
    async with pool.connection() as own:
        yield own
