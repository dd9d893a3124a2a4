"""SQL for refunds: created with their key and the reservation on the charge in one transaction, moved by
guarded transitions, discarded whole when the merchant's balance refused them (psycopg 3, async)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from payray.errors import ClientError, NotFound
from payray.fees import NothingLeftToRefund, RefundTerms, RefundTooLarge, refund_terms
from payray.money import Money
from payray.pages import Page
from payray.refund import RefundState, RefundTransition
from serve_app.stores import connection
from serve_app.stores.answers import ANSWER_AND_ANNOUNCE, answer_params
from serve_app.stores.charges import Charge, load_charge
from serve_app.stores.keys import CLAIM_KEY
from serve_app.stores.pages import newest_first, page_params, read_page


class ChargeNotRefundable(ClientError):
    code = "charge_not_refundable"


class AmountTooLarge(ClientError):
    code = "amount_too_large"


@dataclass(frozen=True)
class Refund:
    id: str
    merchant_id: str
    payment_id: str
    amount: Money
    fee_returned: Money  # our share of the charge's fee that this refund gives back
    state: str
    psp_idempotency_key: str
    created_at: datetime
    idempotency_key: str | None = None
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    psp_reference: str | None = None
    failure_reason: str | None = None
    ledger_transaction_id: str | None = None

    @property
    def currency(self) -> str:
        return self.amount.currency

    def evolve(self, **changes: Any) -> Refund:
        return replace(self, **changes)


@dataclass(frozen=True)
class NewRefund:
    """What a refund request brings before its charge is read: the amount, fee share and currency are
    decided against the charge, under its lock (``insert_refund``)."""

    id: str
    merchant_id: str
    charge_id: str
    idempotency_key: str
    psp_idempotency_key: str
    reason: str | None
    metadata: dict[str, str]
    requested: int | None  # None: what is left to refund


def _refund(row: dict[str, Any]) -> Refund:
    """The row as a record: its amounts become ``Money`` here, and only here."""
    currency = row.pop("currency")
    money = {"amount": Money(row["amount"], currency), "fee_returned": Money(row["fee_returned"], currency)}
    return Refund(**{**row, **money})


_COLUMNS = (
    "id, merchant_id, payment_id, amount, fee_returned, currency, state, psp_idempotency_key, created_at, "
    "idempotency_key, reason, metadata, psp_reference, failure_reason, ledger_transaction_id"
)

CLAIM = f"WITH claimed AS ({CLAIM_KEY}) SELECT 1 FROM claimed"

#: The charge, locked until the refund is inserted: concurrent refunds of one charge queue here.
LOCK_CHARGE = """
SELECT state, currency, coalesce(amount_captured, amount) AS amount, fee, amount_refunded
FROM payments WHERE id = %(charge)s AND merchant_id = %(merchant_id)s
FOR UPDATE
"""

RESERVE_AND_INSERT = f"""
WITH reserved AS (
    UPDATE payments SET amount_refunded = amount_refunded + %(amount)s, updated_at = now()
    WHERE id = %(charge)s AND coalesce(amount_captured, amount) - amount_refunded >= %(amount)s
    RETURNING id
)
INSERT INTO refunds (id, merchant_id, payment_id, amount, fee_returned, currency, reason, metadata, state,
                     idempotency_key, psp_idempotency_key)
SELECT %(id)s, %(merchant_id)s, reserved.id, %(amount)s, %(fee_returned)s, %(currency)s, %(reason)s,
       %(metadata)s, %(state)s, %(key)s, %(psp_idempotency_key)s
FROM reserved
RETURNING {_COLUMNS}
"""

#: Moves a refund (guarded by its current state), records the step, stores the answer under its key,
#: announces it in the outbox (and, given the charge's object, ``charge.refunded``) and, when it failed, gives
#: the reserved amount back to the charge.
APPLY_TRANSITION = f"""
WITH moved AS (
    UPDATE refunds SET
        state = %(to_state)s,
        psp_reference = COALESCE(%(psp_reference)s, psp_reference),
        failure_reason = COALESCE(%(failure_reason)s, failure_reason),
        ledger_transaction_id = COALESCE(%(ledger_transaction_id)s, ledger_transaction_id),
        updated_at = now()
    WHERE id = %(id)s AND state = %(from_state)s
    RETURNING {_COLUMNS}
), history AS (
    INSERT INTO refund_transitions (refund_id, from_state, event, to_state, detail)
    SELECT moved.id, %(from_state)s, %(event)s, %(to_state)s, %(detail)s FROM moved
), released AS (
    UPDATE payments p SET amount_refunded = p.amount_refunded - moved.amount, updated_at = now()
    FROM moved WHERE p.id = moved.payment_id AND %(to_state)s = 'failed'
), charge_refunded AS (
    INSERT INTO outbox (topic, aggregate_id, payload, merchant_id, idempotency_key)
    SELECT 'charge.refunded', moved.payment_id, %(charge_refunded)s, moved.merchant_id, moved.idempotency_key
    FROM moved WHERE %(charge_refunded)s::jsonb IS NOT NULL
), {ANSWER_AND_ANNOUNCE}
SELECT * FROM moved
"""

#: A refund the balance did not cover: it never moved money, so it leaves nothing (row, key, reservation).
DISCARD = """
WITH gone AS (
    DELETE FROM refunds WHERE id = %(id)s AND state = 'pending'
    RETURNING id, merchant_id, payment_id, amount, idempotency_key
), released AS (
    UPDATE payments p SET amount_refunded = p.amount_refunded - gone.amount, updated_at = now()
    FROM gone WHERE p.id = gone.payment_id
)
DELETE FROM idempotency_keys k USING gone
WHERE k.merchant_id = gone.merchant_id AND k.key = gone.idempotency_key
"""

SELECT_REFUND = f"SELECT {_COLUMNS} FROM refunds WHERE id = %s"
SELECT_MERCHANT_REFUND = f"SELECT {_COLUMNS} FROM refunds WHERE id = %s AND merchant_id = %s"

LIST_REFUNDS = newest_first("refunds", _COLUMNS, only="(%(charge)s::text IS NULL OR payment_id = %(charge)s)")


async def insert_refund(
    conn: AsyncConnection[Any], refund: NewRefund, fingerprint: bytes, lease_ms: int
) -> Refund | None:
    """Claim the key, check the charge and reserve the amount on it, and insert the refund, atomically.

    ``None`` if the key was already taken. Raises ``NotFound`` for a charge the merchant does not have,
    ``ChargeNotRefundable`` unless it succeeded, ``AmountTooLarge`` past what is left to refund; then nothing
    is written. The refund gives back its share of the fee stored
    with the charge, so refunding a whole charge takes back exactly what its capture gave the merchant.
    """
    params: dict[str, Any] = {
        "id": refund.id,
        "merchant_id": refund.merchant_id,
        "key": refund.idempotency_key,
        "fingerprint": fingerprint,
        "lease_ms": lease_ms,
        "charge": refund.charge_id,
        "reason": refund.reason,
        "metadata": Jsonb(refund.metadata),
        "state": RefundState.PENDING.value,
        "psp_idempotency_key": refund.psp_idempotency_key,
    }
    async with conn.transaction():
        claimed = await (await conn.execute(CLAIM, params)).fetchone()
        if claimed is None:
            return None
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(LOCK_CHARGE, params)
            charge = await cur.fetchone()
            if charge is None:
                raise NotFound(f"No such charge: '{refund.charge_id}'", param="charge")
            if charge["state"] != "succeeded":
                raise ChargeNotRefundable(
                    f"Charge {refund.charge_id} has not succeeded; only succeeded charges can be refunded.",
                    param="charge",
                )
            charged = Money(int(charge["amount"]), charge["currency"])
            capture_fee = Money(int(charge["fee"]), charged.currency)
            refunded = int(charge["amount_refunded"])
            terms = _terms(refund.charge_id, charged, capture_fee, refunded, refund.requested)
            params.update(
                amount=terms.amount.amount, fee_returned=terms.fee_returned.amount, currency=charged.currency
            )
            await cur.execute(RESERVE_AND_INSERT, params)
            row = await cur.fetchone()
    assert row is not None  # the charge row is locked: the reservation cannot fail after the checks
    return _refund(row)


def _terms(
    charge_id: str, charged: Money, capture_fee: Money, refunded: int, requested: int | None
) -> RefundTerms:
    """``refund_terms``, its refusals answered as the API answers them."""
    try:
        return refund_terms(charged, capture_fee, refunded, requested)
    except NothingLeftToRefund:
        raise ChargeNotRefundable(f"Charge {charge_id} has already been refunded.", param="charge") from None
    except RefundTooLarge as exc:
        asked, left = exc.requested, exc.refundable
        raise AmountTooLarge(
            f"Refund amount ({asked}) is greater than unrefunded amount on charge ({left}).", param="amount"
        ) from None


@dataclass(frozen=True)
class RefundWrite:
    """One transition from ``refund.state``, the columns it sets, and the answer and outbox event it decides
    (if it decides one)."""

    refund: Refund
    transition: RefundTransition
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    response: tuple[int, bytes] | None = None
    outbox: tuple[str, dict[str, Any]] | None = None
    #: the refunded charge's object, announced as ``charge.refunded`` with the refund's own event
    charge_refunded: dict[str, Any] | None = None


async def apply_transition(conn: AsyncConnection[Any], write: RefundWrite) -> Refund | None:
    """Persist ``write``; ``None`` if the refund's state moved meanwhile."""
    fields, transition = write.fields, write.transition
    params = {
        "id": write.refund.id,
        "from_state": transition.source.value,
        "event": transition.event.value,
        "to_state": transition.target.value,
        "psp_reference": fields.get("psp_reference"),
        "failure_reason": fields.get("failure_reason"),
        "ledger_transaction_id": fields.get("ledger_transaction_id"),
        "detail": Jsonb(write.detail),
        **answer_params(write.response, write.outbox),
        "charge_refunded": Jsonb(write.charge_refunded) if write.charge_refunded is not None else None,
    }
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(APPLY_TRANSITION, params)
        row = await cur.fetchone()
    return _refund(row) if row else None


async def charge_at_psp(conn: AsyncConnection[Any], payment_id: str) -> tuple[str, str]:
    """The PSP a charge was made at, and that PSP's reference for it."""
    row = await (
        await conn.execute("SELECT psp, psp_reference FROM payments WHERE id = %s", (payment_id,))
    ).fetchone()
    assert row is not None and row[1] is not None, f"refunded charge {payment_id} has no PSP reference"
    return str(row[0]), str(row[1])


async def discard(conn: AsyncConnection[Any], refund_id: str) -> None:
    await conn.execute(DISCARD, {"id": refund_id})


async def load_refund(
    conn: AsyncConnection[Any], refund_id: str, merchant_id: str | None = None
) -> Refund | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        if merchant_id is None:
            await cur.execute(SELECT_REFUND, (refund_id,))
        else:
            await cur.execute(SELECT_MERCHANT_REFUND, (refund_id, merchant_id))
        row = await cur.fetchone()
    return _refund(row) if row else None


LOCK_MERCHANT_REFUND = f"{SELECT_MERCHANT_REFUND} FOR UPDATE"
SET_METADATA = f"UPDATE refunds SET metadata = %s, updated_at = now() WHERE id = %s RETURNING {_COLUMNS}"


async def lock_merchant_refund(conn: AsyncConnection[Any], refund_id: str, merchant_id: str) -> Refund | None:
    """The merchant's refund, held until the transaction ends: one update of its metadata at a time."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LOCK_MERCHANT_REFUND, (refund_id, merchant_id))
        row = await cur.fetchone()
    return _refund(row) if row else None


async def set_metadata(conn: AsyncConnection[Any], refund_id: str, metadata: dict[str, str]) -> Refund:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SET_METADATA, (Jsonb(metadata), refund_id))
        row = await cur.fetchone()
    assert row is not None, "the refund is locked by the caller's transaction"
    return _refund(row)


async def list_refunds(
    conn: AsyncConnection[Any], merchant_id: str, charge: str | None, page: Page
) -> list[Refund]:
    return await read_page(conn, LIST_REFUNDS, page, page_params(merchant_id, page, charge=charge), _refund)


#: Of a charge's refunds: what the PSP confirmed to us, and whether one is waiting for the PSP's word.
REFUNDS_CONFIRMED = """
SELECT coalesce(sum(amount) FILTER (WHERE state IN ('succeeded', 'booking')), 0),
       bool_or(state = 'psp_unknown')
FROM refunds WHERE payment_id = %s
"""

#: A refund the PSP made without us, booked as ``booking``: the charge's refunded amount grows with it.
LEARN_REFUND = """
WITH counted AS (
    UPDATE payments SET amount_refunded = amount_refunded + %(amount)s, updated_at = now()
    WHERE id = %(payment_id)s
      AND NOT EXISTS (SELECT 1 FROM refunds WHERE psp_reference = %(psp_reference)s)
    RETURNING id, merchant_id, currency
)
INSERT INTO refunds (id, merchant_id, payment_id, amount, fee_returned, currency, state, psp_idempotency_key,
                     psp_reference)
SELECT %(id)s, merchant_id, id, %(amount)s, %(fee_returned)s, currency, 'booking', %(psp_key)s,
       %(psp_reference)s
FROM counted
RETURNING id
"""


async def refunds_confirmed(conn: AsyncConnection[Any], payment_id: str) -> tuple[int, bool]:
    """How much of the charge's refunds the PSP confirmed, and whether one still awaits the PSP's word."""
    row = await (await conn.execute(REFUNDS_CONFIRMED, (payment_id,))).fetchone()
    return (int(row[0]), bool(row[1])) if row else (0, False)


async def learn_refund(
    conn: AsyncConnection[Any], refund_id: str, payment_id: str, amount: int, fee_returned: int,
    psp_reference: str,
) -> str | None:  # fmt: skip
    """Record a refund the PSP made without us (``booking``), counted on its charge; ``None`` if one with
    that PSP reference is known already."""
    params = {
        "id": refund_id,
        "payment_id": payment_id,
        "amount": amount,
        "fee_returned": fee_returned,
        "psp_key": f"psp-{psp_reference}",
        "psp_reference": psp_reference,
    }
    row = await (await conn.execute(LEARN_REFUND, params)).fetchone()
    return str(row[0]) if row else None


class PostgresRefunds:
    """The refund flow's store on the service's pool (``serve_app.flows.refund.RefundStore``)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def load(self, refund_id: str) -> Refund | None:
        async with self._pool.connection() as conn:
            return await load_refund(conn, refund_id)

    async def apply(self, write: RefundWrite, conn: AsyncConnection[Any] | None = None) -> Refund | None:
        async with connection.on(self._pool, conn) as on:
            return await apply_transition(on, write)

    async def charge_at_psp(self, charge_id: str) -> tuple[str, str]:
        async with self._pool.connection() as conn:
            return await charge_at_psp(conn, charge_id)

    async def charge(self, charge_id: str) -> Charge | None:
        async with self._pool.connection() as conn:
            return await load_charge(conn, charge_id)

    async def discard(self, refund_id: str) -> None:
        async with self._pool.connection() as conn:
            await discard(conn, refund_id)
