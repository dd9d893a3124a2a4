"""SQL for merchants and their hashed API keys."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from payray.ids import hash_api_key, new_api_key, new_id

INSERT_MERCHANT = "INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, %s, %s) RETURNING created_at"
MERCHANT_BY_KEY_HASH = "SELECT id FROM merchants WHERE api_key_hash = %s"


async def create_merchant(conn: AsyncConnection[Any], name: str) -> dict[str, Any]:
    """Returns the merchant with its API key: the only time the key is ever shown."""
    merchant_id, api_key = new_id("acct", 16), new_api_key()
    cur = await conn.execute(INSERT_MERCHANT, (merchant_id, name, hash_api_key(api_key)))
    row = await cur.fetchone()
    assert row is not None
    return {
        "id": merchant_id,
        "object": "merchant",
        "name": name,
        "api_key": api_key,
        "created": int(row[0].timestamp()),
    }


async def merchant_for_key(conn: AsyncConnection[Any], api_key: str) -> str | None:
    cur = await conn.execute(MERCHANT_BY_KEY_HASH, (hash_api_key(api_key),))
    row = await cur.fetchone()
    return row[0] if row else None
