"""SQL for charges (the ``payments`` table), their transitions and their durable idempotency records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.postings import CAPTURE, Statement
from payray.charge import Transition
from payray.errors import InvalidRequest
from payray.money import Money
from payray.pages import Page
from serve_app.stores import connection
from serve_app.stores.answers import ANSWER_AND_ANNOUNCE, answer_params
from serve_app.stores.customers import CUSTOMER_KNOWN
from serve_app.stores.intents import FOLLOW, Following, follow_params
from serve_app.stores.keys import CLAIM_KEY, claim_key_where
from serve_app.stores.pages import newest_first, page_params, read_page


@dataclass(frozen=True)
class Charge:
    id: str
    merchant_id: str
    amount: Money
    fee: Money  # ours, taken at capture; decided when the charge is created
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
    amount_refunded: int = 0  # in the amount's minor units
    ledger_transaction_id: str | None = None
    capture_method: str = "automatic"  # "manual": authorized only, until captured or released
    amount_captured: int | None = None  # of an authorization: what its capture asks for, then took
    payment_intent_id: str | None = None
    cancellation_reason: str | None = None  # why an authorization was released: the merchant's, or "expired"
    #: the PSP of its current attempt (the one ``psp_idempotency_key`` and ``psp_reference`` are of)
    psp: str = "stripe"

    @property
    def captured_amount(self) -> Money:
        """What the capture moves: the whole amount, or the part of an authorization asked for."""
        return self.amount if self.amount_captured is None else Money(self.amount_captured, self.currency)

    @property
    def currency(self) -> str:
        return self.amount.currency

    def evolve(self, **changes: Any) -> Charge:
        return replace(self, **changes)


_PAYMENT_COLUMNS = (
    "id, merchant_id, amount, currency, fee, payment_method, state, idempotency_key, psp_idempotency_key, "
    "created_at, description, metadata, customer, psp_reference, failure_code, failure_message, "
    "amount_refunded, ledger_transaction_id, capture_method, amount_captured, payment_intent_id, "
    "cancellation_reason, psp"
)

#: Claims the key and creates the charge in one statement: either both rows exist or neither does. Neither
#: does when the charge names a customer the merchant does not have (``customer_known`` false); ``key_taken``
#: then says whether the key was already used, so a retry of a finished request still replays its answer.
INSERT_PAYMENT_WITH_KEY = f"""
WITH known AS (SELECT {CUSTOMER_KNOWN} AS ok), claimed AS ({claim_key_where("(SELECT ok FROM known)")}),
charge AS (
    INSERT INTO payments (id, merchant_id, amount, currency, fee, payment_method, state, idempotency_key,
                          psp_idempotency_key, description, metadata, customer, capture_method,
                          payment_intent_id, psp)
    SELECT %(id)s, %(merchant_id)s, %(amount)s, %(currency)s, %(fee)s, %(payment_method)s, %(state)s, %(key)s,
           %(psp_idempotency_key)s, %(description)s, %(metadata)s, %(customer)s, %(capture_method)s,
           %(payment_intent_id)s, %(psp)s
    FROM claimed
    RETURNING {_PAYMENT_COLUMNS}
), history AS (
    INSERT INTO payment_transitions (payment_id, from_state, event, to_state)
    SELECT charge.id, steps.from_state, steps.event, steps.to_state
    FROM charge, jsonb_to_recordset(%(steps)s) AS steps(from_state text, event text, to_state text)
)
SELECT charge.*, known.ok AS customer_known,
       NOT known.ok AND EXISTS (SELECT 1 FROM idempotency_keys
                                WHERE merchant_id = %(merchant_id)s AND key = %(key)s) AS key_taken
FROM known LEFT JOIN charge ON true
"""

SELECT_PAYMENT = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = %s"
SELECT_MERCHANT_PAYMENT = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = %s AND merchant_id = %s"

#: ``%(customer)s``: only that customer's charges (``NULL``: all); another merchant's id matches none.
LIST_PAYMENTS = newest_first(
    "payments", _PAYMENT_COLUMNS, only="(%(customer)s::text IS NULL OR customer = %(customer)s)"
)


def _apply_transitions(ledger_transaction: str) -> str:
    """Applies a chain of transitions (guarded by the expected current state), writes their history, and
    optionally stores the response under the charge's idempotency key and an outbox event, and the
    transition of the PaymentIntent that follows the charge, atomically. A write that starts the payment's
    next attempt (``%(next_psp)s``) records the attempt that ended, and starts the next one afresh: its own
    key, no PSP reference or failure yet."""
    return f"""
WITH moved AS (
    UPDATE payments SET
        state = %(to_state)s,
        psp = COALESCE(%(next_psp)s, psp),
        psp_idempotency_key = COALESCE(%(next_key)s, psp_idempotency_key),
        psp_reference = CASE WHEN %(next_psp)s::text IS NULL
                             THEN COALESCE(%(psp_reference)s, psp_reference) END,
        failure_code = CASE WHEN %(next_psp)s::text IS NULL THEN COALESCE(%(failure_code)s, failure_code) END,
        failure_message = CASE WHEN %(next_psp)s::text IS NULL
                               THEN COALESCE(%(failure_message)s, failure_message) END,
        ledger_transaction_id = COALESCE({ledger_transaction}, ledger_transaction_id),
        amount_captured = COALESCE(%(amount_captured)s, amount_captured),
        fee = COALESCE(%(fee)s, fee),
        cancellation_reason = COALESCE(%(cancellation_reason)s, cancellation_reason),
        updated_at = now()
    WHERE id = %(id)s AND state = %(from_state)s
    RETURNING {_PAYMENT_COLUMNS}
), history AS (
    INSERT INTO payment_transitions (payment_id, from_state, event, to_state, detail)
    SELECT moved.id, steps.from_state, steps.event, steps.to_state, %(detail)s
    FROM moved, jsonb_to_recordset(%(steps)s) AS steps(from_state text, event text, to_state text)
), ended_attempt AS (
    INSERT INTO payment_attempts (idempotency_key, payment_id, psp, psp_reference, ended, failure_code)
    SELECT a.idempotency_key, moved.id, a.psp, a.psp_reference, a.ended, a.failure_code
    FROM moved, jsonb_to_record(%(ended_attempt)s) AS a(
        idempotency_key text, psp text, psp_reference text, ended text, failure_code text)
    WHERE %(ended_attempt)s::jsonb IS NOT NULL
), {ANSWER_AND_ANNOUNCE}, {FOLLOW}
SELECT * FROM moved
"""


APPLY_TRANSITIONS = _apply_transitions("%(ledger_transaction_id)s")

#: ``APPLY_TRANSITIONS`` run inside a posting's own ledger transaction (``Posting.completes``: a capture, a
#: hold or its release): the charge's ledger transaction is the capture that transaction just wrote, or
#: found already written (a hold or a release leaves it as it was).
BOOKING = _apply_transitions(
    f"(SELECT id FROM ledger_transactions WHERE kind = '{CAPTURE}' AND external_ref = %(id)s)"
)

STORE_RESPONSE = """
UPDATE idempotency_keys AS k SET response_status = %(status)s, response_body = %(body)s,
       completed_at = now(), locked_until = NULL
FROM payments AS p
WHERE p.id = %(id)s AND k.merchant_id = p.merchant_id AND k.key = p.idempotency_key
"""


def _charge(row: dict[str, Any]) -> Charge:
    """The row as a record: its amounts become ``Money`` here, and only here."""
    currency = row.pop("currency")
    return Charge(**{**row, "amount": Money(row["amount"], currency), "fee": Money(row["fee"], currency)})


def _steps(transitions: list[Transition]) -> Jsonb:
    return Jsonb(
        [
            {"from_state": t.source.value, "event": t.event.value, "to_state": t.target.value}
            for t in transitions
        ]
    )


async def insert_charge(
    conn: AsyncConnection[Any],
    charge: Charge,
    fingerprint: bytes,
    transitions: list[Transition],
    lease_ms: int,
) -> Charge | None:
    """Create the charge and claim its key; ``None`` if the key was already taken. A customer the merchant
    does not have (missing, another merchant's, deleted) is a 400 naming ``customer``; nothing is written."""
    params = {
        "id": charge.id,
        "merchant_id": charge.merchant_id,
        "key": charge.idempotency_key,
        "fingerprint": fingerprint,
        "lease_ms": lease_ms,
        "amount": charge.amount.amount,
        "currency": charge.currency,
        "fee": charge.fee.amount,
        "payment_method": charge.payment_method,
        "state": charge.state,
        "psp_idempotency_key": charge.psp_idempotency_key,
        "description": charge.description,
        "metadata": Jsonb(charge.metadata),
        "customer": charge.customer,
        "capture_method": charge.capture_method,
        "payment_intent_id": charge.payment_intent_id,
        "psp": charge.psp,
        "steps": _steps(transitions),
    }
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(INSERT_PAYMENT_WITH_KEY, params)
        row = await cur.fetchone()
    assert row is not None, "the statement answers one row"
    customer_known, key_taken = row.pop("customer_known"), row.pop("key_taken")
    if row["id"] is not None:
        return _charge(row)
    if not customer_known and not key_taken:
        message = f"No such customer: '{charge.customer}'"
        raise InvalidRequest(message, code="resource_missing", param="customer")
    return None


async def load_charge(
    conn: AsyncConnection[Any], payment_id: str, merchant_id: str | None = None
) -> Charge | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        if merchant_id is None:
            await cur.execute(SELECT_PAYMENT, (payment_id,))
        else:
            await cur.execute(SELECT_MERCHANT_PAYMENT, (payment_id, merchant_id))
        row = await cur.fetchone()
    return _charge(row) if row else None


async def list_charges(
    conn: AsyncConnection[Any], merchant_id: str, page: Page, *, customer: str | None = None
) -> list[Charge]:
    params = page_params(merchant_id, page, customer=customer)
    return await read_page(conn, LIST_PAYMENTS, page, params, _charge)


LOCK_MERCHANT_PAYMENT = f"{SELECT_MERCHANT_PAYMENT} FOR UPDATE"

SET_DETAILS = f"""
UPDATE payments SET description = %(description)s, metadata = %(metadata)s, updated_at = now()
WHERE id = %(id)s
RETURNING {_PAYMENT_COLUMNS}
"""


async def lock_merchant_charge(
    conn: AsyncConnection[Any], payment_id: str, merchant_id: str
) -> Charge | None:
    """The merchant's charge, its row held until the transaction ends: one update of its details at a time."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(LOCK_MERCHANT_PAYMENT, (payment_id, merchant_id))
        row = await cur.fetchone()
    return _charge(row) if row else None


async def set_details(
    conn: AsyncConnection[Any], payment_id: str, description: str | None, metadata: dict[str, str]
) -> Charge:
    """A charge's description and metadata: what a merchant may change, and nothing that moves money."""
    params = {"id": payment_id, "description": description, "metadata": Jsonb(metadata)}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SET_DETAILS, params)
        row = await cur.fetchone()
    assert row is not None, "the charge is locked by the caller's transaction"
    return _charge(row)


@dataclass(frozen=True)
class EndedAttempt:
    """An attempt that ended in a definite failure at its PSP, recorded as the payment goes on to the next."""

    idempotency_key: str
    psp: str
    psp_reference: str | None
    ended: str  # payray.routing.AttemptEnd: not_sent, refused or declined
    failure_code: str | None


@dataclass(frozen=True)
class ChargeWrite:
    """A chain of transitions from ``charge.state``, the columns it sets, and the answer and outbox event
    it decides (if it decides one): one statement, or the statement a capture's ledger transaction runs."""

    charge: Charge
    chain: list[Transition]
    fields: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    response: tuple[int, bytes] | None = None
    outbox: tuple[str, dict[str, Any]] | None = None
    intent: Following | None = None  # the PaymentIntent's transition, when the charge's changes it
    ended: EndedAttempt | None = None  # the attempt this write leaves, going on to ``fields["psp"]``


def _write_params(write: ChargeWrite) -> dict[str, Any]:
    fields = write.fields
    return {
        "id": write.charge.id,
        "from_state": write.chain[0].source.value,
        "to_state": write.chain[-1].target.value,
        "psp_reference": fields.get("psp_reference"),
        "failure_code": fields.get("failure_code"),
        "failure_message": fields.get("failure_message"),
        "ledger_transaction_id": fields.get("ledger_transaction_id"),
        "amount_captured": fields.get("amount_captured"),
        "fee": fields.get("fee"),
        "cancellation_reason": fields.get("cancellation_reason"),
        "next_psp": fields.get("psp") if write.ended else None,
        "next_key": fields.get("psp_idempotency_key") if write.ended else None,
        "ended_attempt": Jsonb(asdict(write.ended)) if write.ended else None,
        "detail": Jsonb(write.detail),
        "steps": _steps(write.chain),
        **answer_params(write.response, write.outbox),
        **follow_params(write.intent),
    }


async def apply_transitions(conn: AsyncConnection[Any], write: ChargeWrite) -> Charge | None:
    """Persist ``write``; ``None`` if the charge's state moved meanwhile."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(APPLY_TRANSITIONS, _write_params(write))
        row = await cur.fetchone()
    return _charge(row) if row else None


def booking_statement(write: ChargeWrite) -> Statement:
    """The transitions a posting completes (a capture, a hold or its release), as the statement its ledger
    transaction runs."""
    return Statement(BOOKING, _write_params(write))


async def store_response(conn: AsyncConnection[Any], payment_id: str, status: int, body: bytes) -> None:
    await conn.execute(STORE_RESPONSE, {"id": payment_id, "status": status, "body": body})


PAYMENT_BY_PSP = "SELECT id FROM payments WHERE psp_reference = %s"

LOCK_PAYMENT = "SELECT id FROM payments WHERE id = %s FOR UPDATE"


async def charge_id_for_psp_reference(conn: AsyncConnection[Any], psp_reference: str) -> str | None:
    row = await (await conn.execute(PAYMENT_BY_PSP, (psp_reference,))).fetchone()
    return str(row[0]) if row else None


async def lock_charge(conn: AsyncConnection[Any], payment_id: str) -> None:
    """Hold the charge's row until the transaction ends: one writer of its refunded amount at a time."""
    await conn.execute(LOCK_PAYMENT, (payment_id,))


class PostgresCharges:
    """The charge flow's store on the service's pool (``serve_app.flows.charge.ChargeStore``)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def load(self, charge_id: str) -> Charge | None:
        async with self._pool.connection() as conn:
            return await load_charge(conn, charge_id)

    async def apply(self, write: ChargeWrite, conn: AsyncConnection[Any] | None = None) -> Charge | None:
        async with connection.on(self._pool, conn) as on:
            return await apply_transitions(on, write)

    def booking(self, write: ChargeWrite) -> Statement:
        return booking_statement(write)

    async def store_response(self, charge_id: str, status: int, body: bytes) -> None:
        async with self._pool.connection() as conn:
            await store_response(conn, charge_id, status, body)


CLAIM_FOR_CHARGE = f"WITH claimed AS ({CLAIM_KEY}) SELECT 1 FROM claimed"

STORE_ANSWER = """
UPDATE idempotency_keys SET response_status = %(status)s, response_body = %(body)s,
       completed_at = now(), locked_until = NULL
WHERE merchant_id = %(merchant_id)s AND key = %(key)s
"""


async def claim_key_for(
    conn: AsyncConnection[Any], merchant_id: str, key: str, fingerprint: bytes, charge_id: str, lease_ms: int
) -> bool:
    """Claim ``key`` for a request about an existing charge (its capture); False if it was taken. Run it in
    the transaction that persists what the request does, so a refused request leaves no key behind."""
    params = {"merchant_id": merchant_id, "key": key, "fingerprint": fingerprint, "id": charge_id}
    cursor = await conn.execute(CLAIM_FOR_CHARGE, {**params, "lease_ms": lease_ms})
    return await cursor.fetchone() is not None


async def store_answer(
    conn: AsyncConnection[Any], merchant_id: str, key: str, status: int, body: bytes
) -> None:
    """The final answer of a request about an existing charge, under its own key, for replays."""
    params = {"merchant_id": merchant_id, "key": key, "status": status, "body": body}
    await conn.execute(STORE_ANSWER, params)
