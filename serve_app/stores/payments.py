"""SQL for payments, their transitions and their durable idempotency records (psycopg 3, async)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ledger.postings import CAPTURE, Statement
from payray.charge import Transition
from payray.money import Money
from serve_app.stores.answers import ANSWER_AND_ANNOUNCE, answer_params
from serve_app.stores.keys import CLAIM_KEY
from serve_app.stores.pages import newest_first


@dataclass(frozen=True)
class Payment:
    id: str
    merchant_id: str
    amount: int
    currency: str
    fee: int  # our fee on the amount, taken at capture; decided when the payment is created
    payment_method: str
    state: str
    idempotency_key: str
    psp_idempotency_key: str
    created_at: datetime
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    customer: str | None = None
    psp_reference: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    amount_refunded: int = 0
    ledger_transaction_id: str | None = None

    @property
    def capture_fee(self) -> Money:
        return Money(self.fee, self.currency)

    def evolve(self, **changes: Any) -> Payment:
        return replace(self, **changes)


_PAYMENT_COLUMNS = (
    "id, merchant_id, amount, currency, fee, payment_method, state, idempotency_key, psp_idempotency_key, "
    "created_at, description, metadata, customer, psp_reference, failure_code, failure_message, "
    "amount_refunded, ledger_transaction_id"
)

#: Claims the key and creates the payment in one statement: either both rows exist or neither does.
INSERT_PAYMENT_WITH_KEY = f"""
WITH claimed AS ({CLAIM_KEY}), payment AS (
    INSERT INTO payments (id, merchant_id, amount, currency, fee, payment_method, state, idempotency_key,
                          psp_idempotency_key, description, metadata, customer)
    SELECT %(id)s, %(merchant_id)s, %(amount)s, %(currency)s, %(fee)s, %(payment_method)s, %(state)s, %(key)s,
           %(psp_idempotency_key)s, %(description)s, %(metadata)s, %(customer)s
    FROM claimed
    RETURNING {_PAYMENT_COLUMNS}
), history AS (
    INSERT INTO payment_transitions (payment_id, from_state, event, to_state)
    SELECT payment.id, steps.from_state, steps.event, steps.to_state
    FROM payment, jsonb_to_recordset(%(steps)s) AS steps(from_state text, event text, to_state text)
)
SELECT * FROM payment
"""

SELECT_PAYMENT = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = %s"
SELECT_MERCHANT_PAYMENT = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = %s AND merchant_id = %s"

LIST_PAYMENTS = newest_first("payments", _PAYMENT_COLUMNS)


def _apply_transitions(ledger_transaction: str) -> str:
    """Applies a chain of transitions (guarded by the expected current state), writes their history, and
    optionally stores the response under the payment's idempotency key and an outbox event, atomically."""
    return f"""
WITH moved AS (
    UPDATE payments SET
        state = %(to_state)s,
        psp_reference = COALESCE(%(psp_reference)s, psp_reference),
        failure_code = COALESCE(%(failure_code)s, failure_code),
        failure_message = COALESCE(%(failure_message)s, failure_message),
        ledger_transaction_id = COALESCE({ledger_transaction}, ledger_transaction_id),
        updated_at = now()
    WHERE id = %(id)s AND state = %(from_state)s
    RETURNING {_PAYMENT_COLUMNS}
), history AS (
    INSERT INTO payment_transitions (payment_id, from_state, event, to_state, detail)
    SELECT moved.id, steps.from_state, steps.event, steps.to_state, %(detail)s
    FROM moved, jsonb_to_recordset(%(steps)s) AS steps(from_state text, event text, to_state text)
), {ANSWER_AND_ANNOUNCE}
SELECT * FROM moved
"""


APPLY_TRANSITIONS = _apply_transitions("%(ledger_transaction_id)s")

#: ``APPLY_TRANSITIONS`` run inside the capture's own ledger transaction (``Posting.completes``): the
#: payment's ledger transaction is the one that transaction just wrote, or found already written.
BOOK_CAPTURE = _apply_transitions(
    f"(SELECT id FROM ledger_transactions WHERE kind = '{CAPTURE}' AND external_ref = %(id)s)"
)

STORE_RESPONSE = """
UPDATE idempotency_keys AS k SET response_status = %(status)s, response_body = %(body)s,
       completed_at = now(), locked_until = NULL
FROM payments AS p
WHERE p.id = %(id)s AND k.merchant_id = p.merchant_id AND k.key = p.idempotency_key
"""


def _payment(row: dict[str, Any]) -> Payment:
    return Payment(**row)


def _steps(transitions: list[Transition]) -> Jsonb:
    return Jsonb(
        [
            {"from_state": t.source.value, "event": t.event.value, "to_state": t.target.value}
            for t in transitions
        ]
    )


async def insert_payment(
    conn: AsyncConnection[Any],
    payment: Payment,
    fingerprint: bytes,
    transitions: list[Transition],
    lease_ms: int,
) -> Payment | None:
    """Create the payment and claim its key; ``None`` if the key was already taken."""
    params = {
        "id": payment.id,
        "merchant_id": payment.merchant_id,
        "key": payment.idempotency_key,
        "fingerprint": fingerprint,
        "lease_ms": lease_ms,
        "amount": payment.amount,
        "currency": payment.currency,
        "fee": payment.fee,
        "payment_method": payment.payment_method,
        "state": payment.state,
        "psp_idempotency_key": payment.psp_idempotency_key,
        "description": payment.description,
        "metadata": Jsonb(payment.metadata),
        "customer": payment.customer,
        "steps": _steps(transitions),
    }
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(INSERT_PAYMENT_WITH_KEY, params)
        row = await cur.fetchone()
    return _payment(row) if row else None


async def load_payment(
    conn: AsyncConnection[Any], payment_id: str, merchant_id: str | None = None
) -> Payment | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        if merchant_id is None:
            await cur.execute(SELECT_PAYMENT, (payment_id,))
        else:
            await cur.execute(SELECT_MERCHANT_PAYMENT, (payment_id, merchant_id))
        row = await cur.fetchone()
    return _payment(row) if row else None


async def list_payments(
    conn: AsyncConnection[Any], merchant_id: str, limit: int, starting_after: str | None
) -> list[Payment]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            LIST_PAYMENTS, {"merchant_id": merchant_id, "after_id": starting_after, "limit": limit}
        )
        return [_payment(row) for row in await cur.fetchall()]


def _transition_params(
    payment: Payment,
    transitions: list[Transition],
    fields: dict[str, Any] | None,
    detail: dict[str, Any] | None,
    response: tuple[int, bytes] | None,
    outbox: tuple[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    fields = fields or {}
    return {
        "id": payment.id,
        "from_state": transitions[0].source.value,
        "to_state": transitions[-1].target.value,
        "psp_reference": fields.get("psp_reference"),
        "failure_code": fields.get("failure_code"),
        "failure_message": fields.get("failure_message"),
        "ledger_transaction_id": fields.get("ledger_transaction_id"),
        "detail": Jsonb(detail or {}),
        "steps": _steps(transitions),
        **answer_params(response, outbox),
    }


async def apply_transitions(
    conn: AsyncConnection[Any],
    payment: Payment,
    transitions: list[Transition],
    *,
    fields: dict[str, Any] | None = None,
    detail: dict[str, Any] | None = None,
    response: tuple[int, bytes] | None = None,
    outbox: tuple[str, dict[str, Any]] | None = None,
) -> Payment | None:
    """Persist a chain of transitions starting at ``payment.state``; ``None`` if the state moved meanwhile."""
    params = _transition_params(payment, transitions, fields, detail, response, outbox)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(APPLY_TRANSITIONS, params)
        row = await cur.fetchone()
    return _payment(row) if row else None


def booking_statement(
    payment: Payment,
    transitions: list[Transition],
    *,
    fields: dict[str, Any],
    detail: dict[str, Any],
    response: tuple[int, bytes],
    outbox: tuple[str, dict[str, Any]],
) -> Statement:
    """The transitions a capture's posting completes, as the statement its ledger transaction runs."""
    return Statement(BOOK_CAPTURE, _transition_params(payment, transitions, fields, detail, response, outbox))


async def store_response(conn: AsyncConnection[Any], payment_id: str, status: int, body: bytes) -> None:
    await conn.execute(STORE_RESPONSE, {"id": payment_id, "status": status, "body": body})


PAYMENT_BY_PSP = "SELECT id FROM payments WHERE psp_reference = %s"

LOCK_PAYMENT = "SELECT id FROM payments WHERE id = %s FOR UPDATE"


async def payment_id_for_psp_reference(conn: AsyncConnection[Any], psp_reference: str) -> str | None:
    row = await (await conn.execute(PAYMENT_BY_PSP, (psp_reference,))).fetchone()
    return str(row[0]) if row else None


async def lock_payment(conn: AsyncConnection[Any], payment_id: str) -> None:
    """Hold the payment's row until the transaction ends: one writer of its refunded amount at a time."""
    await conn.execute(LOCK_PAYMENT, (payment_id,))
