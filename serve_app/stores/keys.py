"""The durable idempotency record shared by every money-moving POST (charges, refunds, payouts).

A key row is always inserted in the same statement as the object it names (see each object's store in
this folder), so either both exist or neither does. This module reads, leases and releases keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

#: The key-claiming step of an ``INSERT … WITH claimed AS (…)`` statement; yields ``object_id`` if claimed.
CLAIM_KEY = """
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, locked_until)
    VALUES (%(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s,
            now() + %(lease_ms)s * interval '1 millisecond')
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING object_id
"""


def claim_key_where(condition: str) -> str:
    """``CLAIM_KEY`` that claims only when the SQL ``condition`` holds: a request it refuses leaves no key."""
    return f"""
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, locked_until)
    SELECT %(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s, now() + %(lease_ms)s * interval '1 millisecond'
    WHERE {condition}
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING object_id
"""


SELECT_KEY = """
SELECT fingerprint, object_id, response_status, response_body,
       (locked_until IS NOT NULL AND locked_until > now()) AS leased
FROM idempotency_keys WHERE merchant_id = %s AND key = %s
"""

#: Take over an abandoned key (its holder crashed, or it answered 202 and the object is still open).
TAKE_OVER_KEY = """
UPDATE idempotency_keys SET locked_until = now() + %(lease_ms)s * interval '1 millisecond'
WHERE merchant_id = %(merchant_id)s AND key = %(key)s AND fingerprint = %(fingerprint)s
  AND (locked_until IS NULL OR locked_until <= now())
  AND (response_status IS NULL OR response_status = 202)
RETURNING object_id
"""

RELEASE_KEY = """
UPDATE idempotency_keys SET locked_until = NULL WHERE merchant_id = %s AND key = %s
"""


@dataclass(frozen=True)
class KeyRecord:
    fingerprint: bytes
    object_id: str | None
    response_status: int | None
    response_body: bytes | None
    leased: bool


async def load_key(conn: AsyncConnection[Any], merchant_id: str, key: str) -> KeyRecord | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SELECT_KEY, (merchant_id, key))
        row = await cur.fetchone()
    return KeyRecord(**row) if row else None


async def take_over_key(
    conn: AsyncConnection[Any], merchant_id: str, key: str, fingerprint: bytes, lease_ms: int
) -> str | None:
    cur = await conn.execute(
        TAKE_OVER_KEY,
        {"merchant_id": merchant_id, "key": key, "fingerprint": fingerprint, "lease_ms": lease_ms},
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def release_key(conn: AsyncConnection[Any], merchant_id: str, key: str) -> None:
    await conn.execute(RELEASE_KEY, (merchant_id, key))
