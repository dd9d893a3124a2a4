"""The one shape of every list endpoint's query: a merchant's rows, newest first, one page beside a cursor."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from payray.pages import Page

R = TypeVar("R")


@dataclass(frozen=True)
class PageSql:
    """One list's query in both directions: ``older`` after ``starting_after`` (newest first), ``newer``
    before ``ending_before`` (oldest first, so ``LIMIT`` keeps the rows nearest the cursor)."""

    older: str
    newer: str


#: How most lists order their rows: by creation, and by id among rows created at the same instant.
CREATED_THEN_ID = ("created_at", "id")


def _query(table: str, columns: str, only: str, newer: bool, key: str, order: tuple[str, ...]) -> str:
    narrowed = f"\n  AND {only}" if only else ""
    cursor, direction = (">", "ASC") if newer else ("<", "DESC")
    row = ", ".join(order)
    ordered = ", ".join(f"{table}.{column} {direction}" for column in order)  # the table's, not an alias
    return f"""
SELECT {columns} FROM {table}
WHERE merchant_id = %(merchant_id)s{narrowed}
  AND (%(created_from)s::bigint IS NULL OR created_at >= to_timestamp(%(created_from)s::bigint))
  AND (%(created_until)s::bigint IS NULL OR created_at < to_timestamp(%(created_until)s::bigint))
  AND (%(cursor_id)s::text IS NULL OR ({row}) {cursor} (
        SELECT {row} FROM {table} WHERE {key} = %(cursor_id)s AND merchant_id = %(merchant_id)s))
ORDER BY {ordered}
LIMIT %(limit)s
"""


def newest_first(
    table: str, columns: str, *, only: str = "", key: str = "id", order: tuple[str, ...] = CREATED_THEN_ID
) -> PageSql:
    """A page of ``table``'s rows of ``%(merchant_id)s`` within the ``created`` range, ``%(limit)s`` long,
    beside the row ``%(cursor_id)s`` (``NULL`` for the first page). ``only`` is a further condition, if any;
    ``key`` is the column of the public id a cursor names, ``order`` the columns that order the rows (unique
    together, newest last).

    The cursor is the row itself, not an offset, so rows created while a client pages do not shift the pages.
    """
    return PageSql(
        _query(table, columns, only, False, key, order), _query(table, columns, only, True, key, order)
    )


def page_params(merchant_id: str, page: Page, **more: Any) -> dict[str, Any]:
    """The parameters of a ``newest_first`` query; it reads one row beyond the page, to tell ``has_more``."""
    cursor = page.cursor
    return {
        "merchant_id": merchant_id,
        "limit": page.limit + 1,
        "cursor_id": cursor[1] if cursor else None,
        "created_from": page.created_from,
        "created_until": page.created_until,
        **more,
    }


async def read_page(
    conn: AsyncConnection[Any], sql: PageSql, page: Page, params: Mapping[str, Any],
    record: Callable[[dict[str, Any]], R],
) -> list[R]:  # fmt: skip
    """Up to ``limit + 1`` rows, newest first, whichever way the page goes (``Page.trim`` cuts the extra)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.newer if page.backwards else sql.older, params)
        rows = [record(row) for row in await cur.fetchall()]
    return rows[::-1] if page.backwards else rows
