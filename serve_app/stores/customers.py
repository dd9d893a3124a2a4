"""SQL for customers: created with key and answer in one statement, changed and deleted under a row lock.

A deleted customer keeps its row (charges still name it), but every read here skips it, so the API, and the
check a charge makes of its ``customer``, treat it as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from payray.pages import Page
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_one


@dataclass(frozen=True)
class Customer:
    id: str
    merchant_id: str
    created_at: datetime
    email: str | None = None
    name: str | None = None
    description: str | None = None
    phone: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


_COLUMNS = "id, merchant_id, created_at, email, name, description, phone, metadata"

#: Whether ``%(customer)s`` (NULL: no customer named) is one of ``%(merchant_id)s``'s live customers: one
#: primary-key lookup, for the statements that create what names a customer.
CUSTOMER_KNOWN = """(%(customer)s::text IS NULL OR EXISTS (
    SELECT 1 FROM customers
    WHERE id = %(customer)s AND merchant_id = %(merchant_id)s AND deleted_at IS NULL))"""

#: The key, its answer (a customer is final when created), the customer and its event commit together.
INSERT_WITH_KEY = f"""
WITH claimed AS (
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, response_status, response_body,
                                  completed_at)
    VALUES (%(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s, 200, %(body)s, now())
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING object_id
), customer AS (
    INSERT INTO customers (id, merchant_id, created_at, email, name, description, phone, metadata,
                           idempotency_key)
    SELECT %(id)s, %(merchant_id)s, %(created_at)s, %(email)s, %(name)s, %(description)s, %(phone)s,
           %(metadata)s, %(key)s
    FROM claimed
    RETURNING {_COLUMNS}
), announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, idempotency_key)
    SELECT 'customer.created', customer.id, %(event)s, customer.merchant_id, %(key)s FROM customer
)
SELECT {_COLUMNS} FROM customer
"""

_LIVE = "id = %(id)s AND merchant_id = %(merchant_id)s AND deleted_at IS NULL"
SELECT_CUSTOMER = f"SELECT {_COLUMNS} FROM customers WHERE {_LIVE}"
LOCK_CUSTOMER = f"{SELECT_CUSTOMER} FOR UPDATE"
UPDATE_CUSTOMER = f"""
UPDATE customers SET email = %(email)s, name = %(name)s, description = %(description)s, phone = %(phone)s,
       metadata = %(metadata)s, updated_at = now()
WHERE {_LIVE}
RETURNING {_COLUMNS}
"""
DELETE_CUSTOMER = f"UPDATE customers SET deleted_at = now(), updated_at = now() WHERE {_LIVE}"
ANNOUNCE = """
INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, previous_attributes)
VALUES (%s, %s, %s, %s, %s)
"""

LIST_CUSTOMERS = newest_first(
    "customers", _COLUMNS, only="deleted_at IS NULL AND (%(email)s::text IS NULL OR email = %(email)s)"
)


def _customer(**columns: Any) -> Customer:
    return Customer(**columns)


async def insert_customer(
    conn: AsyncConnection[Any], customer: Customer, key: str, fingerprint: bytes, body: bytes,
    event: dict[str, Any],
) -> Customer | None:  # fmt: skip
    """Create the customer with its key, answer and event; ``None`` if the key was already taken."""
    params = {
        "id": customer.id,
        "merchant_id": customer.merchant_id,
        "created_at": customer.created_at,
        "email": customer.email,
        "name": customer.name,
        "description": customer.description,
        "phone": customer.phone,
        "metadata": Jsonb(customer.metadata),
        "key": key,
        "fingerprint": fingerprint,
        "body": body,
        "event": Jsonb(event),
    }
    return await fetch_one(conn, INSERT_WITH_KEY, params, _customer)


async def load_customer(conn: AsyncConnection[Any], customer_id: str, merchant_id: str) -> Customer | None:
    return await fetch_one(conn, SELECT_CUSTOMER, {"id": customer_id, "merchant_id": merchant_id}, _customer)


async def lock_customer(conn: AsyncConnection[Any], customer_id: str, merchant_id: str) -> Customer | None:
    """The live customer, its row held until the transaction ends: one writer at a time."""
    return await fetch_one(conn, LOCK_CUSTOMER, {"id": customer_id, "merchant_id": merchant_id}, _customer)


async def save_customer(
    conn: AsyncConnection[Any], customer: Customer, event: dict[str, Any], previous: dict[str, Any]
) -> Customer:
    """Write the customer's fields (inside the transaction that locked it) and its ``customer.updated``,
    whose ``data.previous_attributes`` is ``previous``."""
    params = {
        "id": customer.id,
        "merchant_id": customer.merchant_id,
        "email": customer.email,
        "name": customer.name,
        "description": customer.description,
        "phone": customer.phone,
        "metadata": Jsonb(customer.metadata),
    }
    saved = await fetch_one(conn, UPDATE_CUSTOMER, params, _customer)
    assert saved is not None, "the caller holds the row's lock"
    topic, merchant_id = "customer.updated", customer.merchant_id
    await conn.execute(ANNOUNCE, (topic, customer.id, Jsonb(event), merchant_id, Jsonb(previous)))
    return saved


async def delete_customer(conn: AsyncConnection[Any], customer: Customer, event: dict[str, Any]) -> None:
    """Mark the customer deleted (inside the transaction that locked it) and write ``customer.deleted``."""
    await conn.execute(DELETE_CUSTOMER, {"id": customer.id, "merchant_id": customer.merchant_id})
    await conn.execute(ANNOUNCE, ("customer.deleted", customer.id, Jsonb(event), customer.merchant_id, None))


async def list_customers(
    conn: AsyncConnection[Any], merchant_id: str, email: str | None, page: Page
) -> list[Customer]:
    params = page_params(merchant_id, page, email=email)
    return await read_page(conn, LIST_CUSTOMERS, page, params, lambda row: _customer(**row))
