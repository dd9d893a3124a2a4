"""Migrations that change rows already there: what they fill in for data written before them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ledger import store
from ledger.migrate import CREATE_TRACKING_TABLE, available_migrations, migrate
from ledger.postings import capture_posting
from payray.money import Money

PAYMENT_FEE = 8  # the migration that stores the capture fee with the payment
EVENTS = 10  # the migration that makes the outbox rows the merchant's events


@contextmanager
def _database_before(postgres_server_url: str, version_after: int) -> Iterator[str]:
    """A new database migrated up to, not including, migration ``version_after``."""
    name = f"payray_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_server_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_TRACKING_TABLE)
        for version, migration, sql in available_migrations():
            if version < version_after:
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, migration)
                )
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_before_payment_fee(postgres_server_url: str) -> Iterator[str]:
    with _database_before(postgres_server_url, PAYMENT_FEE) as url:
        yield url


@pytest.fixture
def database_before_events(postgres_server_url: str) -> Iterator[str]:
    with _database_before(postgres_server_url, EVENTS) as url:
        yield url


def _payment(
    conn: psycopg.Connection[Any], merchant: str, payment_id: str, amount: int, fee: int | None = None
) -> None:
    """A payment row of the schema before the fee (``fee`` None), or after it."""
    fee_column, fee_value = (", fee", f", {int(fee)}") if fee is not None else ("", "")
    conn.execute(
        f"""INSERT INTO payments (id, merchant_id, amount, currency, payment_method, state, idempotency_key,
                                  psp_idempotency_key{fee_column})
            VALUES (%s, %s, %s, 'usd', 'pm_card_visa', 'succeeded', %s, %s{fee_value})""",
        (payment_id, merchant, amount, payment_id, f"psp-{payment_id}"),
    )


def test_existing_payments_get_the_fee_their_capture_booked_or_else_the_fee_rule(
    database_before_payment_fee: str,
) -> None:
    url = database_before_payment_fee
    merchant = "acct_migrated"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, 'm', %s)", (merchant, b"k"))
        for payment_id, amount in [("ch_booked", 1000), ("ch_free", 1000), ("ch_open", 1000), ("ch_tiny", 1)]:
            _payment(conn, merchant, payment_id, amount)
        booked = capture_posting("ch_booked", merchant, Money(1000, "usd"), Money(50, "usd"))
        free = capture_posting("ch_free", merchant, Money(1000, "usd"), Money(0, "usd"))
        assert all(r.error is None for r in store.post_batch(conn, [booked, free], shard=0))

    assert migrate(url) == [name for version, name, _ in available_migrations() if version >= PAYMENT_FEE]

    with psycopg.connect(url) as conn:
        fees: dict[str, int] = dict(conn.execute("SELECT id, fee FROM payments").fetchall())
    # the fee the ledger holds, whatever the rate was; the rule at the default 290 bps where none is booked
    assert fees == {"ch_booked": 50, "ch_free": 0, "ch_open": 29, "ch_tiny": 0}


def test_existing_outbox_rows_become_events_of_their_merchant_under_stripe_types(
    database_before_events: str,
) -> None:
    url = database_before_events
    merchant = "acct_events"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO merchants (id, name, api_key_hash) VALUES (%s, 'm', %s)", (merchant, b"k"))
        _payment(conn, merchant, "ch_1", 1000, fee=29)
        conn.execute(
            """INSERT INTO payouts (id, merchant_id, amount, currency, state, idempotency_key)
               VALUES ('po_1', %s, 100, 'usd', 'in_transit', 'po-key')""",
            (merchant,),
        )
        for topic, aggregate in [("charge.succeeded", "ch_1"), ("payout.in_transit", "po_1"),
                                 ("dispute.won", "du_gone")]:  # fmt: skip
            conn.execute(
                "INSERT INTO outbox (topic, aggregate_id, payload) VALUES (%s, %s, '{}')", (topic, aggregate)
            )

    migrate(url)

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT event_id, topic, merchant_id, idempotency_key FROM outbox ORDER BY id"
        ).fetchall()
    assert [row[1:] for row in rows] == [
        ("charge.succeeded", merchant, "ch_1"),
        ("payout.created", merchant, "po-key"),
        ("charge.dispute.closed", None, None),
    ]
    assert all(row[0].startswith("evt_") for row in rows) and len({row[0] for row in rows}) == 3
