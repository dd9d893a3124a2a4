"""Read-only checks of the ledger's invariants; each returns the number of violations (0 is healthy).

They read the entries themselves, the ledger's source of truth, so they also catch a bug in the code that
maintains ``account_balances`` or in the triggers that guard the tables. Used by ``payray verify``, the admin
API, the simulator's and load tests' final checks, and the fault tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

UNBALANCED_TRANSACTIONS = """
WITH per_currency AS (
    SELECT transaction_id, currency, count(*) AS n,
           sum(CASE direction WHEN 'debit' THEN amount WHEN 'credit' THEN -amount END) AS net
      FROM ledger_entries
     GROUP BY transaction_id, currency
), per_transaction AS (
    SELECT transaction_id, sum(n) AS n, bool_or(net IS DISTINCT FROM 0) AS unbalanced
      FROM per_currency
     GROUP BY transaction_id
)
SELECT count(*)
  FROM ledger_transactions t
  LEFT JOIN per_transaction p ON p.transaction_id = t.id
 WHERE coalesce(p.n, 0) < 2 OR p.unbalanced
"""

UNBALANCED_CURRENCIES = """
SELECT count(*) FROM (
    SELECT currency
      FROM ledger_entries
     GROUP BY currency
    HAVING sum(CASE direction WHEN 'debit' THEN amount ELSE 0 END)
        <> sum(CASE direction WHEN 'credit' THEN amount ELSE 0 END)
) unbalanced
"""

BALANCES_NOT_MATCHING_ENTRIES = """
WITH from_entries AS (
    SELECT account_id,
           coalesce(sum(amount) FILTER (WHERE direction = 'debit'), 0) AS debits,
           coalesce(sum(amount) FILTER (WHERE direction = 'credit'), 0) AS credits
      FROM ledger_entries
     GROUP BY account_id
)
SELECT count(*)
  FROM from_entries e
  FULL JOIN account_balances b ON b.account_id = e.account_id
 WHERE coalesce(e.debits, 0) <> coalesce(b.debits, 0)
    OR coalesce(e.credits, 0) <> coalesce(b.credits, 0)
"""

WALLET_MISMATCHES = """
WITH wallet AS (
    SELECT w.key AS merchant_id, c.key AS currency, c.value::bigint AS available
      FROM jsonb_each(%(wallets)s::jsonb) w,
           jsonb_each_text(w.value) c
), ledger AS (
    SELECT a.merchant_id, a.currency,
           sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) AS available
      FROM accounts a
      JOIN ledger_entries e ON e.account_id = a.id
     WHERE a.name = 'merchant_payable'
       AND a.merchant_id IN (SELECT key FROM jsonb_object_keys(%(wallets)s::jsonb) AS k(key))
     GROUP BY a.merchant_id, a.currency
)
SELECT count(*)
  FROM wallet w
  FULL JOIN ledger l ON l.merchant_id = w.merchant_id AND l.currency = w.currency
 WHERE coalesce(w.available, 0) <> coalesce(l.available, 0)
"""


def _count(conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any] | None = None) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def unbalanced_transactions(conn: psycopg.Connection[Any]) -> int:
    """Ledger transactions with fewer than two entries or with debits ≠ credits in some currency."""
    return _count(conn, UNBALANCED_TRANSACTIONS)


def ledger_totals_balanced(conn: psycopg.Connection[Any]) -> int:
    """Currencies whose total debits differ from their total credits over the whole ledger."""
    return _count(conn, UNBALANCED_CURRENCIES)


def balances_match_entries(conn: psycopg.Connection[Any]) -> int:
    """Accounts whose ``account_balances`` row disagrees with the sum of their entries."""
    return _count(conn, BALANCES_NOT_MATCHING_ENTRIES)


def wallet_mismatches(conn: psycopg.Connection[Any], wallet_balances: Mapping[str, Mapping[str, int]]) -> int:
    """(merchant, currency) pairs where a wallet's available balance differs from the merchant's
    ``merchant_payable`` entries, for the merchants given (a currency missing on either side counts as 0)."""
    if not wallet_balances:
        return 0
    wallets = {merchant: dict(by_currency) for merchant, by_currency in wallet_balances.items()}
    return _count(conn, WALLET_MISMATCHES, {"wallets": Jsonb(wallets)})
