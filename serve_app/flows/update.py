"""Updates of what a merchant may change on a charge or a refund: description and metadata, never money.

Each update reads its object under a row lock, merges the change (``payray.metadata``), writes it and its
outbox event (``charge.updated``, ``refund.updated``, with the prior values of what changed as Stripe's
``data.previous_attributes``) in one transaction, so two updates never lose a key and an event is written
exactly when a change is: an update that changes nothing writes neither.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from payray.changes import previous_attributes
from payray.errors import NotFound
from payray.metadata import merged_metadata
from serve_app.stores import charges as charges_db
from serve_app.stores import refunds as refunds_db
from serve_app.stores.answers import announce
from serve_app.stores.charges import Charge
from serve_app.stores.refunds import Refund
from serve_app.wire.render import charge_object, refund_object
from serve_app.wire.schemas import ChargeUpdate, RefundUpdate


async def _announce(
    conn: AsyncConnection[Any], topic: str, merchant_id: str, before: dict[str, Any], after: dict[str, Any]
) -> None:
    previous = previous_attributes(before, after)
    await announce(conn, topic, after["id"], after, merchant_id=merchant_id, previous=previous)


async def update_charge(
    pool: AsyncConnectionPool[Any], merchant_id: str, charge_id: str, change: ChargeUpdate
) -> Charge:
    """The merchant's charge after ``change``; another merchant's answers 404 like a missing one."""
    async with pool.connection() as conn, conn.transaction():
        charge = await charges_db.lock_merchant_charge(conn, charge_id, merchant_id)
        if charge is None:
            raise NotFound(f"No such charge: '{charge_id}'", param="id")
        description = charge.description
        if "description" in change.model_fields_set:
            description = change.description or None  # "" removes it, as Stripe's
        metadata = merged_metadata(charge.metadata, change.metadata)
        if (description, metadata) == (charge.description, charge.metadata):
            return charge
        updated = await charges_db.set_details(conn, charge.id, description, metadata)
        await _announce(conn, "charge.updated", merchant_id, charge_object(charge), charge_object(updated))
    return updated


async def update_refund(
    pool: AsyncConnectionPool[Any], merchant_id: str, refund_id: str, change: RefundUpdate
) -> Refund:
    """The merchant's refund after ``change``; another merchant's answers 404 like a missing one."""
    async with pool.connection() as conn, conn.transaction():
        refund = await refunds_db.lock_merchant_refund(conn, refund_id, merchant_id)
        if refund is None:
            raise NotFound(f"No such refund: '{refund_id}'", param="id")
        metadata = merged_metadata(refund.metadata, change.metadata)
        if metadata == refund.metadata:
            return refund
        updated = await refunds_db.set_metadata(conn, refund.id, metadata)
        await _announce(conn, "refund.updated", merchant_id, refund_object(refund), refund_object(updated))
    return updated
