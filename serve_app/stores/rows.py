"""Run a query and map its rows to a store's record type, by column name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import dict_row

R = TypeVar("R")


async def fetch_one(
    conn: AsyncConnection[Any], sql: str, params: Mapping[str, Any], record: Callable[..., R]
) -> R | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        row = await cur.fetchone()
    return record(**row) if row else None


async def fetch_all(
    conn: AsyncConnection[Any], sql: str, params: Mapping[str, Any], record: Callable[..., R]
) -> list[R]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return [record(**row) for row in await cur.fetchall()]
