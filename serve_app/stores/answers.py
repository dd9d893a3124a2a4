"""What a guarded transition writes besides its own row: the answer under the request's key, and the outbox
event, in the same statement, so the answer, the event and the new state commit together or not at all."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

#: The common table expressions that follow ``WITH moved AS (UPDATE … RETURNING …)``, where ``moved``
#: returns ``id``, ``merchant_id`` and ``idempotency_key``: ``answered`` stores the response under the moved
#: row's key when a status is given, ``announced`` writes the outbox event (the merchant's event, as
#: ``GET /v1/events`` lists it) when a topic is given.
ANSWER_AND_ANNOUNCE = """
answered AS (
    UPDATE idempotency_keys AS k SET
        response_status = %(response_status)s, response_body = %(response_body)s,
        completed_at = now(), locked_until = NULL
    FROM moved
    WHERE %(response_status)s::int IS NOT NULL
      AND k.merchant_id = moved.merchant_id AND k.key = moved.idempotency_key
), announced AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, idempotency_key)
    SELECT CASE WHEN %(topic_again)s::text IS NOT NULL
                 AND EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = moved.id)
                THEN %(topic_again)s ELSE %(topic)s END,
           moved.id, %(outbox_payload)s, moved.merchant_id, moved.idempotency_key
    FROM moved WHERE %(topic)s::text IS NOT NULL
)"""

#: Stripe announces an object's creation once: a later change of it is announced under this topic instead.
ANNOUNCED_AGAIN = {"refund.created": "refund.updated"}


def answer_params(
    response: tuple[int, bytes] | None, outbox: tuple[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """The parameters of ``ANSWER_AND_ANNOUNCE``: ``response`` as (status, body), ``outbox`` as (topic,
    payload); either ``None`` to write nothing of it."""
    return {
        "response_status": response[0] if response else None,
        "response_body": response[1] if response else None,
        "topic": outbox[0] if outbox else None,
        "topic_again": ANNOUNCED_AGAIN.get(outbox[0]) if outbox else None,
        "outbox_payload": Jsonb(outbox[1]) if outbox else None,
    }


ANNOUNCE = """
INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, previous_attributes)
VALUES (%(topic)s, %(id)s, %(payload)s, %(merchant_id)s, %(previous)s)
"""


async def announce(
    conn: AsyncConnection[Any], topic: str, aggregate_id: str, payload: dict[str, Any], *,
    merchant_id: str, previous: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """The merchant's outbox event on its own, in the caller's transaction (a change that answers no
    idempotency key); ``previous``: an update's previous attributes (``data.previous_attributes``)."""
    params = {
        "topic": topic,
        "id": aggregate_id,
        "payload": Jsonb(payload),
        "merchant_id": merchant_id,
        "previous": Jsonb(previous) if previous is not None else None,
    }
    await conn.execute(ANNOUNCE, params)
