"""SQL for PaymentIntents: created with their key in one statement, moved by guarded transitions, and
followed by their charge's transitions in the charge's own statement (``FOLLOW``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from payray.errors import InvalidRequest
from payray.intent import Transition
from payray.money import Money
from payray.pages import Page
from serve_app.stores.customers import CUSTOMER_KNOWN
from serve_app.stores.keys import THIS_HOLDER
from serve_app.stores.pages import newest_first, page_params, read_page
from serve_app.stores.rows import fetch_one


@dataclass(frozen=True)
class Intent:
    id: str
    merchant_id: str
    amount: Money
    capture_method: str
    state: str
    idempotency_key: str
    created_at: datetime
    payment_method: str | None = None
    customer: str | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    charge_id: str | None = None  # the latest charge: the one its last confirmation made
    last_payment_error: dict[str, Any] | None = None
    cancellation_reason: str | None = None
    canceled_at: datetime | None = None
    amount_received: int = 0  # what its charge captured, once it succeeded

    @property
    def currency(self) -> str:
        return self.amount.currency

    def evolve(self, **changes: Any) -> Intent:
        return replace(self, **changes)


_TABLE_COLUMNS = (
    "id, merchant_id, amount, currency, capture_method, payment_method, customer, description, metadata, "
    "state, charge_id, last_payment_error, cancellation_reason, canceled_at, idempotency_key, created_at"
)
_COLUMNS = f"{_TABLE_COLUMNS}, amount_received"


def _intent(**row: Any) -> Intent:
    currency = row.pop("currency")
    return Intent(**{**row, "amount": Money(row["amount"], currency)})


#: The key (leased, or answered at once when the create is final), the intent, its first transition and
#: ``payment_intent.created`` in one statement. None of it when the intent names a customer the merchant
#: does not have (``customer_known`` false); ``key_taken`` then says whether the key was used already.
INSERT_WITH_KEY = f"""
WITH known AS (SELECT {CUSTOMER_KNOWN} AS ok), claimed AS (
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id, locked_until, response_status,
                                  response_body, completed_at, holder)
    SELECT %(merchant_id)s, %(key)s, %(fingerprint)s, %(id)s,
           CASE WHEN %(response_status)s::int IS NULL
                THEN now() + %(lease_ms)s * interval '1 millisecond' END,
           %(response_status)s, %(response_body)s,
           CASE WHEN %(response_status)s::int IS NOT NULL THEN now() END, {THIS_HOLDER}
    WHERE (SELECT ok FROM known)
    ON CONFLICT (merchant_id, key) DO NOTHING
    RETURNING object_id
), intent AS (
    INSERT INTO payment_intents (id, merchant_id, amount, currency, capture_method, payment_method, customer,
                                 description, metadata, state, idempotency_key, created_at)
    SELECT %(id)s, %(merchant_id)s, %(amount)s, %(currency)s, %(capture_method)s, %(payment_method)s,
           %(customer)s, %(description)s, %(metadata)s, %(state)s, %(key)s, %(created_at)s
    FROM claimed
    RETURNING {_TABLE_COLUMNS}, 0::bigint AS amount_received
), history AS (
    INSERT INTO payment_intent_transitions (payment_intent_id, from_state, event, to_state)
    SELECT intent.id, NULL, 'created', intent.state FROM intent
), announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, idempotency_key)
    SELECT 'payment_intent.created', intent.id, %(event)s, intent.merchant_id, %(key)s FROM intent
)
SELECT intent.*, known.ok AS customer_known,
       NOT known.ok AND EXISTS (SELECT 1 FROM idempotency_keys
                                WHERE merchant_id = %(merchant_id)s AND key = %(key)s) AS key_taken
FROM known LEFT JOIN intent ON true
"""

SELECT_INTENT = (
    f"SELECT {_COLUMNS} FROM payment_intents_seen WHERE id = %(id)s AND merchant_id = %(merchant_id)s"
)
LOCK_INTENT = f"""
SELECT {_COLUMNS} FROM payment_intents_seen
WHERE id = (SELECT id FROM payment_intents WHERE id = %(id)s AND merchant_id = %(merchant_id)s FOR UPDATE)
"""
SELECT_INTENT_OF_CHARGE = (
    f"SELECT {_COLUMNS} FROM payment_intents_seen WHERE id = %(id)s AND charge_id = %(charge)s"
)

LIST_INTENTS = newest_first(
    "payment_intents_seen", _COLUMNS, only="(%(customer)s::text IS NULL OR customer = %(customer)s)"
)

#: A guarded transition of the intent (its state still ``from_state``), its history, and its event when the
#: state it reaches is announced. ``charge_id`` sets the latest charge (a confirm); the rest as named.
TRANSITION = f"""
WITH moved AS (
    UPDATE payment_intents SET
        state = %(to_state)s,
        payment_method = CASE WHEN %(set_payment_method)s THEN %(payment_method)s ELSE payment_method END,
        charge_id = COALESCE(%(charge_id)s, charge_id),
        last_payment_error = CASE WHEN %(charge_id)s::text IS NOT NULL THEN NULL ELSE last_payment_error END,
        cancellation_reason = COALESCE(%(cancellation_reason)s, cancellation_reason),
        canceled_at = CASE WHEN %(to_state)s = 'canceled' THEN now() ELSE canceled_at END,
        updated_at = now()
    WHERE id = %(id)s AND state = %(from_state)s
    RETURNING {_TABLE_COLUMNS}
), history AS (
    INSERT INTO payment_intent_transitions (payment_intent_id, from_state, event, to_state)
    SELECT moved.id, steps.from_state, steps.event, steps.to_state
    FROM moved, jsonb_to_recordset(%(steps)s) AS steps(from_state text, event text, to_state text)
), announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, idempotency_key)
    SELECT %(topic)s, moved.id, %(event)s, moved.merchant_id, %(key)s
    FROM moved WHERE %(topic)s::text IS NOT NULL
)
SELECT moved.*, 0::bigint AS amount_received FROM moved
"""

SET_DETAILS = f"""
WITH moved AS (
    UPDATE payment_intents SET amount = %(amount)s, currency = %(currency)s,
        capture_method = %(capture_method)s, payment_method = %(payment_method)s, customer = %(customer)s,
        description = %(description)s, metadata = %(metadata)s, state = %(to_state)s, updated_at = now()
    WHERE id = %(id)s AND merchant_id = %(merchant_id)s AND {CUSTOMER_KNOWN}
    RETURNING {_TABLE_COLUMNS}
), history AS (
    INSERT INTO payment_intent_transitions (payment_intent_id, from_state, event, to_state)
    SELECT moved.id, %(from_state)s, %(event)s, moved.state FROM moved WHERE %(event)s::text IS NOT NULL
)
SELECT moved.*, CASE WHEN moved.state = 'succeeded'
                     THEN (SELECT coalesce(p.amount_captured, p.amount) FROM payments p
                           WHERE p.id = moved.charge_id)
                     ELSE 0 END AS amount_received
FROM moved
"""

#: The common table expressions that follow a charge's ``moved`` (``serve_app.stores.charges``): the intent
#: that confirmed the charge takes its own transition, guarded by its state and by the charge still being its
#: latest, with its history and its event, in the charge's statement. Nothing when ``intent_to`` is NULL.
FOLLOW = """
followed AS (
    UPDATE payment_intents AS i SET
        state = %(intent_to)s,
        last_payment_error = CASE WHEN %(intent_error)s::jsonb IS NOT NULL THEN %(intent_error)s
                                  ELSE i.last_payment_error END,
        payment_method = CASE WHEN %(intent_error)s::jsonb IS NOT NULL THEN NULL ELSE i.payment_method END,
        cancellation_reason = CASE WHEN %(intent_to)s = 'canceled' AND moved.cancellation_reason = 'expired'
                                   THEN COALESCE(i.cancellation_reason, 'automatic')
                                   ELSE i.cancellation_reason END,
        canceled_at = CASE WHEN %(intent_to)s = 'canceled' THEN now() ELSE i.canceled_at END,
        updated_at = now()
    FROM moved
    WHERE %(intent_to)s::text IS NOT NULL AND i.id = moved.payment_intent_id AND i.charge_id = moved.id
      AND i.state = %(intent_from)s
    RETURNING i.id, i.merchant_id
), intent_history AS (
    INSERT INTO payment_intent_transitions (payment_intent_id, from_state, event, to_state)
    SELECT followed.id, %(intent_from)s, %(intent_event)s, %(intent_to)s FROM followed
), intent_announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id)
    SELECT %(intent_topic)s, followed.id, %(intent_payload)s, followed.merchant_id
    FROM followed WHERE %(intent_topic)s::text IS NOT NULL
)"""


SET_CANCELLATION_REASON = "UPDATE payment_intents SET cancellation_reason = %s WHERE id = %s"


async def set_cancellation_reason(conn: AsyncConnection[Any], intent_id: str, reason: str | None) -> None:
    """The merchant's reason for canceling an authorized intent, which its charge's release then cancels."""
    await conn.execute(SET_CANCELLATION_REASON, (reason, intent_id))


@dataclass(frozen=True)
class Following:
    """The intent's transition that a charge transition carries (``FOLLOW``), and its event if announced."""

    transition: Transition
    topic: str | None
    payload: dict[str, Any]
    last_payment_error: dict[str, Any] | None = None


def follow_params(following: Following | None) -> dict[str, Any]:
    """The parameters of ``FOLLOW``; all NULL when the charge's transition changes no intent."""
    if following is None:
        keys = ("intent_from", "intent_event", "intent_to", "intent_error", "intent_topic", "intent_payload")
        return dict.fromkeys(keys)
    t = following.transition
    error = following.last_payment_error
    return {
        "intent_from": t.source.value,
        "intent_event": t.event.value,
        "intent_to": t.target.value,
        "intent_error": Jsonb(error) if error is not None else None,
        "intent_topic": following.topic,
        "intent_payload": Jsonb(following.payload),
    }


async def insert_intent(
    conn: AsyncConnection[Any], intent: Intent, fingerprint: bytes, lease_ms: int,
    answer: tuple[int, bytes] | None, event: dict[str, Any],
) -> Intent | None:  # fmt: skip
    """Create the intent and claim its key (answered with ``answer`` when given, else leased); ``None`` if the
    key was already taken. A customer the merchant does not have is a 400 naming ``customer``."""
    params = {
        "id": intent.id,
        "merchant_id": intent.merchant_id,
        "key": intent.idempotency_key,
        "fingerprint": fingerprint,
        "lease_ms": lease_ms,
        "response_status": answer[0] if answer else None,
        "response_body": answer[1] if answer else None,
        "amount": intent.amount.amount,
        "currency": intent.currency,
        "capture_method": intent.capture_method,
        "payment_method": intent.payment_method,
        "customer": intent.customer,
        "description": intent.description,
        "metadata": Jsonb(intent.metadata),
        "state": intent.state,
        "created_at": intent.created_at,
        "event": Jsonb(event),
    }
    row: dict[str, Any] | None = await fetch_one(conn, INSERT_WITH_KEY, params, dict)
    assert row is not None, "the statement answers one row"
    customer_known, key_taken = row.pop("customer_known"), row.pop("key_taken")
    if row["id"] is not None:
        return _intent(**row)
    if not customer_known and not key_taken:
        message = f"No such customer: '{intent.customer}'"
        raise InvalidRequest(message, code="resource_missing", param="customer")
    return None


async def load_intent(conn: AsyncConnection[Any], intent_id: str, merchant_id: str) -> Intent | None:
    return await fetch_one(conn, SELECT_INTENT, {"id": intent_id, "merchant_id": merchant_id}, _intent)


async def lock_intent(conn: AsyncConnection[Any], intent_id: str, merchant_id: str) -> Intent | None:
    """The merchant's intent, its row held until the transaction ends: one change of it at a time."""
    return await fetch_one(conn, LOCK_INTENT, {"id": intent_id, "merchant_id": merchant_id}, _intent)


async def intent_of_charge(conn: AsyncConnection[Any], intent_id: str, charge_id: str) -> Intent | None:
    """The intent whose latest charge is ``charge_id``; None if a later confirmation replaced it."""
    return await fetch_one(conn, SELECT_INTENT_OF_CHARGE, {"id": intent_id, "charge": charge_id}, _intent)


async def list_intents(
    conn: AsyncConnection[Any], merchant_id: str, page: Page, *, customer: str | None = None
) -> list[Intent]:
    params = page_params(merchant_id, page, customer=customer)
    return await read_page(conn, LIST_INTENTS, page, params, lambda row: _intent(**row))


@dataclass(frozen=True)
class IntentWrite:
    """A chain of the intent's transitions from ``intent.state`` and what it sets, with its event."""

    intent: Intent
    chain: tuple[Transition, ...]
    payment_method: str | None = None
    set_payment_method: bool = False
    charge_id: str | None = None
    cancellation_reason: str | None = None
    topic: str | None = None
    event: dict[str, Any] | None = None


def _steps(chain: tuple[Transition, ...]) -> Jsonb:
    return Jsonb(
        [{"from_state": t.source.value, "event": t.event.value, "to_state": t.target.value} for t in chain]
    )


async def apply_transitions(conn: AsyncConnection[Any], write: IntentWrite) -> Intent | None:
    """Persist ``write``; None if the intent's state moved meanwhile."""
    params = {
        "id": write.intent.id,
        "from_state": write.chain[0].source.value,
        "to_state": write.chain[-1].target.value,
        "payment_method": write.payment_method,
        "set_payment_method": write.set_payment_method,
        "charge_id": write.charge_id,
        "cancellation_reason": write.cancellation_reason,
        "steps": _steps(write.chain),
        "topic": write.topic,
        "event": Jsonb(write.event) if write.event is not None else None,
        "key": write.intent.idempotency_key,
    }
    return await fetch_one(conn, TRANSITION, params, _intent)


async def set_details(
    conn: AsyncConnection[Any], before: Intent, after: Intent, attached: Transition | None
) -> Intent | None:
    """Write what an update changed (inside the transaction that locked the intent), and the transition a
    payment method attached makes; None when ``after.customer`` is not one of the merchant's customers."""
    params = {
        "id": after.id,
        "merchant_id": after.merchant_id,
        "amount": after.amount.amount,
        "currency": after.currency,
        "capture_method": after.capture_method,
        "payment_method": after.payment_method,
        "customer": after.customer,
        "description": after.description,
        "metadata": Jsonb(after.metadata),
        "from_state": before.state,
        "to_state": after.state,
        "event": attached.event.value if attached is not None else None,
    }
    return await fetch_one(conn, SET_DETAILS, params, _intent)
