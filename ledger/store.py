"""The ledger's SQL: post batches of postings, read balances, the trial balance and a transaction's entries.

Every write goes through ``ledger_post_batch`` (``ledger/migrations/0002_ledger.sql`` and ``0003``): one
round trip per batch, written set-based when the whole batch is clean and posting by posting (each in its own
subtransaction, so a refused posting fails alone) when it is not; idempotent on ``(kind, external_ref)``.
Functions here run in the connection's current transaction; on an autocommit connection a batch commits as
part of its one statement, which is what the ledger writers use. A batch whose postings complete other rows
(``Posting.completes``) runs in one explicit transaction with those statements. Each query has a synchronous
and an ``_async`` twin sharing the SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import psycopg
from psycopg.types.json import Jsonb

from ledger.postings import AccountRef, Entry, Posting
from payray.money import Money

POST_BATCH = """
SELECT idx, external_ref, transaction_id, created, error_code, error, merchant_balances
  FROM ledger_post_batch(%(postings)s, %(shard)s)
"""

MERCHANT_BALANCES = """
SELECT a.currency, b.credits - b.debits AS available, b.version
  FROM accounts a
  JOIN account_balances b ON b.account_id = a.id
 WHERE a.name = 'merchant_payable' AND a.merchant_id = %(merchant_id)s AND a.shard = 0
 ORDER BY a.currency
"""

#: ``MERCHANT_BALANCES`` for many merchants in one indexed read.
MERCHANTS_BALANCES = """
SELECT a.merchant_id, a.currency, b.credits - b.debits AS available, b.version
  FROM accounts a
  JOIN account_balances b ON b.account_id = a.id
 WHERE a.name = 'merchant_payable' AND a.merchant_id = ANY(%(merchant_ids)s) AND a.shard = 0
"""

TRIAL_BALANCE = """
SELECT a.currency, sum(b.debits) AS debits, sum(b.credits) AS credits
  FROM account_balances b
  JOIN accounts a ON a.id = b.account_id
 GROUP BY a.currency
 ORDER BY a.currency
"""

TRANSACTION_ENTRIES = """
SELECT a.name, a.currency, a.merchant_id, e.direction, e.amount
  FROM ledger_entries e
  JOIN accounts a ON a.id = e.account_id
 WHERE e.transaction_id = %(transaction_id)s
 ORDER BY e.id
"""

TRANSACTION_FOR = """
SELECT id FROM ledger_transactions WHERE kind = %(kind)s AND external_ref = %(external_ref)s
"""

ENSURE_PARTITIONS = """
SELECT ledger_ensure_partitions(((now() AT TIME ZONE 'UTC') - interval '1 month')::date, %(months_ahead)s)
"""


@dataclass(frozen=True, slots=True)
class MerchantBalance:
    """A merchant's available balance (``merchant_payable``: credits - debits) and the row's version.

    The version grows by one with every posting that touches the account, so of two readings the one with
    the higher version is the newer, whatever order they arrive in.
    """

    currency: str
    available: int
    version: int


@dataclass(frozen=True, slots=True)
class PostingResult:
    """What happened to one posting of a batch.

    ``created`` is false for a repost of an existing ``(kind, external_ref)`` (and for an error);
    ``transaction_id`` is the ledger transaction either way. ``error`` says why the posting was refused
    (nothing of it was written) and ``error_code`` is ``"idempotency_conflict"``, ``"balance_insufficient"``
    or the SQLSTATE of the refusal. ``merchant_balances`` are the merchant's balances, by currency, right
    after this posting, for the currencies it touches.
    """

    external_ref: str
    transaction_id: str | None
    created: bool
    error: str | None
    merchant_balances: dict[str, MerchantBalance]
    error_code: str | None = None
    #: whether the statement the posting completes took effect (``None``: it had none, or was refused)
    completed: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class TrialBalanceLine(TypedDict):
    debits: int
    credits: int
    balanced: bool


def posting_document(posting: Posting) -> dict[str, Any]:
    """The JSON object ``ledger_post_batch`` expects for one posting."""
    return {
        "kind": posting.kind,
        "external_ref": posting.external_ref,
        "merchant_id": posting.merchant_id,
        "description": posting.description,
        "posting_date": posting.posting_date.isoformat() if posting.posting_date else None,
        "require_funds": posting.require_funds,
        "entries": [
            {
                "account": entry.account.name,
                "merchant_id": entry.account.merchant_id,
                "currency": entry.amount.currency,
                "direction": entry.direction,
                "amount": entry.amount.amount,
            }
            for entry in posting.entries
        ],
    }


def _batch_params(documents: Sequence[dict[str, Any]], shard: int) -> dict[str, Any]:
    return {"postings": Jsonb(list(documents)), "shard": shard}


def _merchant_balances(raw: dict[str, Any] | None) -> dict[str, MerchantBalance]:
    if not raw:
        return {}
    return {
        currency: MerchantBalance(currency, int(value["balance"]), int(value["version"]))
        for currency, value in raw.items()
    }


def _results(rows: Iterable[tuple[Any, ...]]) -> list[PostingResult]:
    return [
        PostingResult(
            external_ref=external_ref,
            transaction_id=transaction_id,
            created=created,
            error=error,
            merchant_balances=_merchant_balances(balances),
            error_code=error_code,
        )
        for _idx, external_ref, transaction_id, created, error_code, error, balances in rows
    ]


def post_documents(
    conn: psycopg.Connection[Any], documents: Sequence[dict[str, Any]], shard: int
) -> list[PostingResult]:
    """Post raw posting documents (see ``posting_document``); one result per document, in order."""
    if not documents:
        return []
    rows = conn.execute(POST_BATCH, _batch_params(documents, shard)).fetchall()
    return _results(rows)


def post_batch(conn: psycopg.Connection[Any], postings: Sequence[Posting], shard: int) -> list[PostingResult]:
    """Post ``postings`` in one round trip on house-account shard ``shard``; one result each, in order."""
    return post_documents(conn, [posting_document(p) for p in postings], shard)


async def post_batch_async(
    conn: psycopg.AsyncConnection[Any], postings: Sequence[Posting], shard: int
) -> list[PostingResult]:
    """``post_batch`` on an autocommit connection, with what the postings complete in the same transaction."""
    if not postings:
        return []
    params = _batch_params([posting_document(p) for p in postings], shard)
    if not any(p.completes is not None for p in postings):
        cursor = await conn.execute(POST_BATCH, params)
        return _results(await cursor.fetchall())
    async with conn.transaction():
        cursor = await conn.execute(POST_BATCH, params)
        results = _results(await cursor.fetchall())
        return await _complete(conn, postings, results)


async def _complete(
    conn: psycopg.AsyncConnection[Any], postings: Sequence[Posting], results: list[PostingResult]
) -> list[PostingResult]:
    """Run the statements the written postings complete, one pipelined ``executemany`` per distinct SQL."""
    by_sql: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, (posting, result) in enumerate(zip(postings, results, strict=True)):
        if posting.completes is not None and result.ok:
            by_sql.setdefault(posting.completes.sql, []).append((i, posting.completes.params))
    for sql, rows in by_sql.items():
        async with conn.cursor() as cur:
            await cur.executemany(sql, [params for _, params in rows], returning=True)
            for n, (i, _) in enumerate(rows):
                if n:
                    cur.nextset()
                results[i] = replace(results[i], completed=await cur.fetchone() is not None)
    return results


def _balances_by_currency(rows: Iterable[tuple[Any, ...]]) -> dict[str, MerchantBalance]:
    return {
        currency: MerchantBalance(currency, int(available), int(version))
        for currency, available, version in rows
    }


def merchant_balances(conn: psycopg.Connection[Any], merchant_id: str) -> dict[str, MerchantBalance]:
    """The merchant's available balance in every currency it has an account in."""
    return _balances_by_currency(conn.execute(MERCHANT_BALANCES, {"merchant_id": merchant_id}).fetchall())


async def merchant_balances_async(
    conn: psycopg.AsyncConnection[Any], merchant_id: str
) -> dict[str, MerchantBalance]:
    cursor = await conn.execute(MERCHANT_BALANCES, {"merchant_id": merchant_id})
    return _balances_by_currency(await cursor.fetchall())


async def merchants_balances_async(
    conn: psycopg.AsyncConnection[Any], merchant_ids: Sequence[str]
) -> dict[str, dict[str, MerchantBalance]]:
    """``merchant_balances`` of each of ``merchant_ids`` (``{}`` for one without accounts yet)."""
    found: dict[str, dict[str, MerchantBalance]] = {m: {} for m in merchant_ids}
    cursor = await conn.execute(MERCHANTS_BALANCES, {"merchant_ids": list(merchant_ids)})
    for merchant_id, currency, available, version in await cursor.fetchall():
        found[merchant_id][currency] = MerchantBalance(currency, int(available), int(version))
    return found


def trial_balance(conn: psycopg.Connection[Any]) -> dict[str, TrialBalanceLine]:
    """Total debits and credits per currency over every account (house shards summed)."""
    return {
        currency: TrialBalanceLine(debits=int(debits), credits=int(credits), balanced=debits == credits)
        for currency, debits, credits in conn.execute(TRIAL_BALANCE).fetchall()
    }


def transaction_entries(conn: psycopg.Connection[Any], transaction_id: str) -> list[Entry]:
    """The entries of one ledger transaction, in the order they were written ([] for an unknown id)."""
    rows = conn.execute(TRANSACTION_ENTRIES, {"transaction_id": transaction_id}).fetchall()
    return [
        Entry(AccountRef(name, currency, merchant_id), direction, Money(int(amount), currency))
        for name, currency, merchant_id, direction, amount in rows
    ]


def transaction_for(conn: psycopg.Connection[Any], kind: str, external_ref: str) -> str | None:
    """The id of the ledger transaction posted for ``(kind, external_ref)``, if any."""
    row = conn.execute(TRANSACTION_FOR, {"kind": kind, "external_ref": external_ref}).fetchone()
    return row[0] if row else None


async def transaction_for_async(
    conn: psycopg.AsyncConnection[Any], kind: str, external_ref: str
) -> str | None:
    cursor = await conn.execute(TRANSACTION_FOR, {"kind": kind, "external_ref": external_ref})
    row = await cursor.fetchone()
    return row[0] if row else None


async def ensure_partitions_async(conn: psycopg.AsyncConnection[Any], months_ahead: int = 3) -> int:
    """Create the monthly entry partitions from last month to ``months_ahead`` ahead; returns how many."""
    cursor = await conn.execute(ENSURE_PARTITIONS, {"months_ahead": months_ahead})
    row = await cursor.fetchone()
    return int(row[0]) if row else 0
