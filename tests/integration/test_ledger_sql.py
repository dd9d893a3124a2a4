"""What Postgres itself enforces on the ledger, whatever client writes to it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import psycopg
import pytest

from ledger import invariants

INSERT_TRANSACTION = """
INSERT INTO ledger_transactions (id, kind, external_ref, fingerprint, posting_date)
VALUES (%(id)s, 'manual', %(id)s, 'test', %(day)s)
"""
INSERT_ENTRY = """
INSERT INTO ledger_entries (transaction_id, account_id, direction, amount, currency, posting_date)
VALUES (%(txn)s, %(account)s, %(direction)s, %(amount)s, %(currency)s, %(day)s)
"""
TODAY = date.today()


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def accounts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Account ids of the test's own merchant and house shard 9 (no other test uses it)."""
    merchant = f"acct_sql_{uuid.uuid4().hex[:8]}"

    def account(name: str, merchant_id: str | None, currency: str = "usd") -> int:
        row = conn.execute(
            "SELECT ledger_account_id(%s, %s, %s, 9)", (name, merchant_id, currency)
        ).fetchone()
        assert row is not None
        return int(row[0])

    return {
        "psp_receivable": account("psp_receivable", None),
        "merchant_payable": account("merchant_payable", merchant),
        "eur_payable": account("merchant_payable", merchant, "eur"),
    }


def new_txn_id() -> str:
    return f"txn_sql_{uuid.uuid4().hex}"


def write(
    conn: psycopg.Connection[Any], txn: str, entries: list[tuple[int, str, int, str]], day: date = TODAY
) -> None:
    conn.execute(INSERT_TRANSACTION, {"id": txn, "day": day})
    for account, direction, amount, currency in entries:
        conn.execute(
            INSERT_ENTRY,
            {
                "txn": txn,
                "account": account,
                "direction": direction,
                "amount": amount,
                "currency": currency,
                "day": day,
            },
        )


def rows_of(conn: psycopg.Connection[Any], txn: str) -> tuple[int, int]:
    transactions = conn.execute("SELECT count(*) FROM ledger_transactions WHERE id = %s", (txn,)).fetchone()
    entries = conn.execute("SELECT count(*) FROM ledger_entries WHERE transaction_id = %s", (txn,)).fetchone()
    assert transactions is not None and entries is not None
    return transactions[0], entries[0]


def test_a_balanced_transaction_commits(conn: psycopg.Connection[Any], accounts: dict[str, int]) -> None:
    txn = new_txn_id()
    with conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "usd"),
                (accounts["merchant_payable"], "credit", 100, "usd"),
            ],
        )
    assert rows_of(conn, txn) == (1, 2)


def test_an_unbalanced_transaction_is_refused_at_commit_and_leaves_no_rows(
    conn: psycopg.Connection[Any], accounts: dict[str, int]
) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.CheckViolation, match="does not balance"), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "usd"),
                (accounts["merchant_payable"], "credit", 99, "usd"),
            ],
        )
        # the statements themselves succeed: the check is deferred to COMMIT
        assert rows_of(conn, txn) == (1, 2)
    assert rows_of(conn, txn) == (0, 0)


def test_balance_is_per_currency(conn: psycopg.Connection[Any], accounts: dict[str, int]) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.CheckViolation, match="does not balance"), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "usd"),
                (accounts["eur_payable"], "credit", 100, "eur"),
            ],
        )
    assert rows_of(conn, txn) == (0, 0)


@pytest.mark.parametrize("n_entries", [0, 1])
def test_a_transaction_needs_two_entries(
    conn: psycopg.Connection[Any], accounts: dict[str, int], n_entries: int
) -> None:
    txn = new_txn_id()
    entries = [(accounts["psp_receivable"], "debit", 100, "usd")][:n_entries]
    with pytest.raises(psycopg.errors.CheckViolation, match="at least 2"), conn.transaction():
        write(conn, txn, entries)
    assert rows_of(conn, txn) == (0, 0)


def test_an_entry_added_after_the_transaction_was_checked_is_checked_again(
    conn: psycopg.Connection[Any], accounts: dict[str, int]
) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.CheckViolation, match="does not balance"), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "usd"),
                (accounts["merchant_payable"], "credit", 100, "usd"),
            ],
        )
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the check passes here...
        conn.execute("SET CONSTRAINTS ALL DEFERRED")
        conn.execute(
            INSERT_ENTRY,
            {
                "txn": txn,
                "account": accounts["merchant_payable"],
                "direction": "credit",
                "amount": 5,
                "currency": "usd",
                "day": TODAY,
            },
        )  # ...and this entry is checked again at commit
    assert rows_of(conn, txn) == (0, 0)


def test_entry_ids_are_assigned_by_the_ledger(
    conn: psycopg.Connection[Any], accounts: dict[str, int]
) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.GeneratedAlways), conn.transaction():
        conn.execute(INSERT_TRANSACTION, {"id": txn, "day": TODAY})
        conn.execute(
            "INSERT INTO ledger_entries (id, transaction_id, account_id, direction, amount, currency,"
            " posting_date) VALUES (1, %s, %s, 'debit', 5, 'usd', %s)",
            (txn, accounts["psp_receivable"], TODAY),
        )
    assert rows_of(conn, txn) == (0, 0)


def test_an_entry_is_in_its_account_currency(conn: psycopg.Connection[Any], accounts: dict[str, int]) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.ForeignKeyViolation), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "eur"),
                (accounts["eur_payable"], "credit", 100, "eur"),
            ],
        )
    assert rows_of(conn, txn) == (0, 0)


def test_amounts_are_positive(conn: psycopg.Connection[Any], accounts: dict[str, int]) -> None:
    txn = new_txn_id()
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", -5, "usd"),
                (accounts["merchant_payable"], "credit", -5, "usd"),
            ],
        )
    assert rows_of(conn, txn) == (0, 0)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1 WHERE transaction_id = %(txn)s",
        "UPDATE {partition} SET amount = amount + 1 WHERE transaction_id = %(txn)s",
        "DELETE FROM ledger_entries WHERE transaction_id = %(txn)s",
        "DELETE FROM {partition} WHERE transaction_id = %(txn)s",
        "TRUNCATE ledger_entries",
        "TRUNCATE {partition}",
        "TRUNCATE ledger_entries_default",
        "UPDATE ledger_transactions SET description = 'edited' WHERE id = %(txn)s",
        "DELETE FROM ledger_transactions WHERE id = %(txn)s",
        "TRUNCATE ledger_transactions CASCADE",
    ],
)
def test_entries_and_transactions_are_append_only(
    conn: psycopg.Connection[Any], accounts: dict[str, int], statement: str
) -> None:
    txn = new_txn_id()
    with conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 100, "usd"),
                (accounts["merchant_payable"], "credit", 100, "usd"),
            ],
        )
    row = conn.execute(
        "SELECT tableoid::regclass::text FROM ledger_entries WHERE transaction_id = %s LIMIT 1", (txn,)
    ).fetchone()
    assert row is not None
    sql = statement.format(partition=row[0])
    params = {"txn": txn} if "%(txn)s" in sql else None
    with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        conn.execute(sql, params)
    assert rows_of(conn, txn) == (1, 2)
    amounts = conn.execute(
        "SELECT sum(amount) FROM ledger_entries WHERE transaction_id = %s", (txn,)
    ).fetchone()
    assert amounts == (200,)


def test_new_partitions_get_the_same_guards(conn: psycopg.Connection[Any], accounts: dict[str, int]) -> None:
    far = date(2091, 3, 1)
    conn.execute("SELECT ledger_ensure_partitions(%s, 0)", (far,))
    assert conn.execute("SELECT to_regclass('ledger_entries_2091_03')::text").fetchone() == (
        "ledger_entries_2091_03",
    )
    assert conn.execute("SELECT ledger_ensure_partitions(%s, 0)", (far,)).fetchone() == (0,)

    txn = new_txn_id()
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 3, "usd"),
                (accounts["merchant_payable"], "credit", 2, "usd"),
            ],
            far,
        )
    with conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 3, "usd"),
                (accounts["merchant_payable"], "credit", 3, "usd"),
            ],
            far,
        )
    assert conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM ledger_entries WHERE transaction_id = %s", (txn,)
    ).fetchall() == [("ledger_entries_2091_03",)]
    with pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("TRUNCATE ledger_entries_2091_03")
    with pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute("DELETE FROM ledger_entries_2091_03")
    assert rows_of(conn, txn) == (1, 2)


def test_a_date_without_its_partition_lands_in_the_default_partition(
    conn: psycopg.Connection[Any], accounts: dict[str, int]
) -> None:
    txn = new_txn_id()
    long_ago = date(1999, 12, 31)
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 3, "usd"),
                (accounts["merchant_payable"], "credit", 4, "usd"),
            ],
            long_ago,
        )
    with conn.transaction():
        write(
            conn,
            txn,
            [
                (accounts["psp_receivable"], "debit", 3, "usd"),
                (accounts["merchant_payable"], "credit", 3, "usd"),
            ],
            long_ago,
        )
    assert conn.execute(
        "SELECT DISTINCT tableoid::regclass::text FROM ledger_entries WHERE transaction_id = %s", (txn,)
    ).fetchall() == [("ledger_entries_default",)]
    # that month can no longer get its own partition (its rows cannot move), and says so instead of failing
    assert conn.execute("SELECT ledger_ensure_partitions(%s, 0)", (long_ago,)).fetchone() == (0,)


def balance_of(conn: psycopg.Connection[Any], account_id: int) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT debits, credits, version FROM account_balances WHERE account_id = %s", (account_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_balances_follow_entries_written_by_hand(
    conn: psycopg.Connection[Any], accounts: dict[str, int]
) -> None:
    before = balance_of(conn, accounts["merchant_payable"])
    with conn.transaction():
        write(
            conn,
            new_txn_id(),
            [
                (accounts["psp_receivable"], "debit", 40, "usd"),
                (accounts["merchant_payable"], "credit", 40, "usd"),
            ],
        )
    debits, credits, version = balance_of(conn, accounts["merchant_payable"])
    assert (debits, credits, version) == (before[0], before[1] + 40, before[2] + 1)
    assert invariants.balances_match_entries(conn) == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE account_balances SET credits = credits + 1 WHERE account_id = %(account)s",
        "DELETE FROM account_balances WHERE account_id = %(account)s",
        "TRUNCATE account_balances",
    ],
)
def test_balances_cannot_be_edited_directly(
    conn: psycopg.Connection[Any], accounts: dict[str, int], statement: str
) -> None:
    before = balance_of(conn, accounts["merchant_payable"])
    params = {"account": accounts["merchant_payable"]} if "%(account)s" in statement else None
    with pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute(statement, params)
    assert balance_of(conn, accounts["merchant_payable"]) == before
