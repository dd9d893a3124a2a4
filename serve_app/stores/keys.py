"""The durable idempotency record shared by every money-moving POST (charges, refunds, payouts).

A key row is always inserted in the same statement as the object it names (see each object's store in
this folder), so either both exist or neither does. This module reads, leases and releases keys.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

#: This process, as its Postgres sessions name themselves (``application_name``): whose leases are whose.
HOLDER = f"payray-{os.getpid()}-{secrets.token_hex(4)}"
#: The process holding a lease, as its sessions name themselves (``HOLDER``): NULL for one that does not.
THIS_HOLDER = "NULLIF(current_setting('application_name'), '')"

#: The key-claiming step of an ``INSERT … WITH claimed AS (…)`` statement; yields ``object_id`` if claimed.
CLAIM_KEY = f"""
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, locked_until, holder)
    VALUES (%(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s,
            now() + %(lease_ms)s * interval '1 millisecond', {THIS_HOLDER})
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING object_id
"""


def claim_key_where(condition: str) -> str:
    """``CLAIM_KEY`` that claims only when the SQL ``condition`` holds: a request it refuses leaves no key."""
    return f"""
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, locked_until, holder)
    SELECT %(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s, now() + %(lease_ms)s * interval '1 millisecond',
           {THIS_HOLDER}
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
#: A retry takes the key over when no request holds it: its lease ran out, or the process that holds it is
#: gone (a process's sessions close with it, so none is left in ``pg_stat_activity``).
TAKE_OVER_KEY = f"""
UPDATE idempotency_keys k
   SET locked_until = now() + %(lease_ms)s * interval '1 millisecond', holder = {THIS_HOLDER}
WHERE merchant_id = %(merchant_id)s AND key = %(key)s AND fingerprint = %(fingerprint)s
  AND (locked_until IS NULL OR locked_until <= now()
       OR (k.holder IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = k.holder)))
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
