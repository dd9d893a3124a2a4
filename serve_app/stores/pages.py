"""The one shape of every list endpoint's query: a merchant's rows, newest first, one page after a cursor."""

from __future__ import annotations


def newest_first(table: str, columns: str, *, only: str = "") -> str:
    """A page of ``table``'s rows of ``%(merchant_id)s``, newest first, ``%(limit)s`` long, after the row
    ``%(after_id)s`` (``NULL`` for the first page). ``only`` is a further condition on them, if any.

    The cursor is the row itself, not an offset, so rows created while a client pages do not shift the pages.
    """
    narrowed = f"\n  AND {only}" if only else ""
    return f"""
SELECT {columns} FROM {table}
WHERE merchant_id = %(merchant_id)s{narrowed}
  AND (%(after_id)s::text IS NULL OR (created_at, id) < (
        SELECT created_at, id FROM {table} WHERE id = %(after_id)s AND merchant_id = %(merchant_id)s))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""
