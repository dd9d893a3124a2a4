"""Customers: ``POST /v1/customers`` behind the idempotency layers, updates and deletes under a row lock.

A customer moves no money, so its create is final at once: the key, its answer, the customer and its
``customer.created`` event commit in one statement, and a retry with the key replays that answer.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.changes import previous_attributes
from payray.errors import InvalidRequest, NotFound
from payray.fingerprint import request_fingerprint
from payray.ids import new_id
from serve_app.flows.idempotent import Answer, IdempotentRequests, Operation
from serve_app.stores import customers as store
from serve_app.stores.customers import Customer
from serve_app.wire.render import dumps
from serve_app.wire.schemas import CustomerCreate, CustomerUpdate

MAX_METADATA_KEYS = 50
_PLAIN_FIELDS = ("email", "name", "description", "phone")


def customer_object(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "customer",
        "created": int(c.created_at.timestamp()),
        "description": c.description,
        "email": c.email,
        "livemode": False,
        "metadata": c.metadata,
        "name": c.name,
        "phone": c.phone,
    }


def deleted_customer_object(customer_id: str) -> dict[str, Any]:
    return {"id": customer_id, "object": "customer", "deleted": True}


def no_such_customer(customer_id: str, param: str = "id") -> NotFound:
    return NotFound(f"No such customer: '{customer_id}'", param=param)


def updated(customer: Customer, body: CustomerUpdate) -> Customer:
    """The customer with what the update sent: a field sent changes (null clears it), one not sent stays;
    ``metadata`` merges key by key (an empty value removes its key), and null clears all of it."""
    sent = body.model_fields_set
    changes: dict[str, Any] = {name: getattr(body, name) for name in _PLAIN_FIELDS if name in sent}
    if "metadata" in sent:
        metadata = dict(customer.metadata) if body.metadata is not None else {}
        for key, value in (body.metadata or {}).items():
            if value == "":
                metadata.pop(key, None)
            else:
                metadata[key] = value
        if len(metadata) > MAX_METADATA_KEYS:
            message = f"a customer holds at most {MAX_METADATA_KEYS} metadata keys"
            raise InvalidRequest(message, param="metadata")
        changes["metadata"] = metadata
    return replace(customer, **changes)


class CustomerService:
    def __init__(self, pool: AsyncConnectionPool[Any], requests: IdempotentRequests) -> None:
        self._pool = pool
        self._requests = requests

    async def create(self, merchant_id: str, key: str, body: CustomerCreate) -> Answer:
        fingerprint = request_fingerprint("POST", "/v1/customers", body.model_dump(mode="json"))
        fresh = Customer(
            id=new_id("cus"),
            merchant_id=merchant_id,
            created_at=datetime.now(UTC),
            email=body.email,
            name=body.name,
            description=body.description,
            phone=body.phone,
            metadata={k: v for k, v in (body.metadata or {}).items() if v != ""},
        )
        rendered = customer_object(fresh)
        answer = dumps(rendered)

        async def create(conn: AsyncConnection[Any]) -> Customer | None:
            return await store.insert_customer(conn, fresh, key, fingerprint, answer, rendered)

        async def start(customer: Customer) -> tuple[int, bytes]:
            return 200, answer

        async def resume(customer_id: str) -> tuple[int, bytes]:
            """Unreachable in practice (the answer is stored with the customer): its current state."""
            async with self._pool.connection() as conn:
                customer = await store.load_customer(conn, customer_id, merchant_id)
            if customer is None:
                raise no_such_customer(customer_id)
            return 200, dumps(customer_object(customer))

        return await self._requests.run(merchant_id, key, fingerprint, Operation(create, start, resume))

    async def update(self, merchant_id: str, customer_id: str, body: CustomerUpdate) -> dict[str, Any]:
        async with self._pool.connection() as conn, conn.transaction():
            current = await store.lock_customer(conn, customer_id, merchant_id)
            if current is None:
                raise no_such_customer(customer_id)
            changed = updated(current, body)
            if changed == current:  # nothing changed: no write, no ``customer.updated``
                return customer_object(current)
            before, after = customer_object(current), customer_object(changed)
            saved = await store.save_customer(conn, changed, after, previous_attributes(before, after))
        return customer_object(saved)

    async def delete(self, merchant_id: str, customer_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn, conn.transaction():
            current = await store.lock_customer(conn, customer_id, merchant_id)
            if current is None:
                raise no_such_customer(customer_id)
            await store.delete_customer(conn, current, customer_object(current))
        return deleted_customer_object(customer_id)
