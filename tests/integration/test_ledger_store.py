"""Posting batches through ``ledger_post_batch``, balances, the trial balance and the invariant checks."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from ledger import invariants, store
from ledger.postings import (
    AccountRef,
    Posting,
    Statement,
    capture_posting,
    credit,
    debit,
    dispute_hold_posting,
    dispute_release_posting,
    fee_for,
    payout_posting,
    refund_posting,
    settlement_posting,
)
from payray.money import Money


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def merchant() -> str:
    return f"acct_{uuid.uuid4().hex[:10]}"


def ref(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def capture(merchant: str, amount: int, currency: str = "usd", payment_id: str | None = None) -> Posting:
    money = Money(amount, currency)
    return capture_posting(payment_id or ref("ch"), merchant, money, fee_for(money, 290))


def count_transactions(conn: psycopg.Connection[Any], external_ref: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM ledger_transactions WHERE external_ref = %s", (external_ref,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_one_bad_posting_does_not_sink_its_batch(conn: psycopg.Connection[Any], merchant: str) -> None:
    good = [capture(merchant, 1000), capture(merchant, 2000)]
    bad = store.posting_document(capture(merchant, 500))
    bad["external_ref"] = ref("ch_bad")
    bad["entries"][1]["amount"] -= 1  # unbalanced: bypasses the Python check
    documents = [store.posting_document(good[0]), bad, store.posting_document(good[1])]

    results = store.post_documents(conn, documents, shard=0)

    assert [r.external_ref for r in results] == [
        good[0].external_ref,
        bad["external_ref"],
        good[1].external_ref,
    ]
    assert [r.created for r in results] == [True, False, True]
    assert results[1].transaction_id is None
    assert results[1].error_code == "23514" and "does not balance" in (results[1].error or "")
    assert results[0].ok and results[2].ok
    assert count_transactions(conn, bad["external_ref"]) == 0
    assert (
        count_transactions(conn, good[0].external_ref) == count_transactions(conn, good[1].external_ref) == 1
    )
    expected = (1000 - 29) + (2000 - 58)
    assert store.merchant_balances(conn, merchant)["usd"].available == expected


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d["entries"].pop(),  # one entry left
        lambda d: d["entries"].clear(),  # no entries
        lambda d: d["entries"][0].update(account="petty_cash"),
        lambda d: d["entries"][1].update(merchant_id="acct_someone_else"),
        lambda d: d["entries"][0].update(amount=0),
        lambda d: d.update(kind="Not A Kind"),
        lambda d: d.update(entries="nope"),
    ],
)
def test_malformed_postings_are_refused_alone(
    conn: psycopg.Connection[Any], merchant: str, spoil: Any
) -> None:
    bad = store.posting_document(capture(merchant, 1000))
    spoil(bad)
    good = capture(merchant, 300)
    results = store.post_documents(conn, [bad, store.posting_document(good)], shard=0)
    assert results[0].error is not None and results[0].transaction_id is None
    assert results[1].created
    assert count_transactions(conn, bad["external_ref"]) == 0


def test_reposting_is_a_no_op(conn: psycopg.Connection[Any], merchant: str) -> None:
    posting = capture(merchant, 1000)
    [first] = store.post_batch(conn, [posting], shard=0)
    entries_before = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()

    again = store.post_batch(conn, [posting, posting], shard=1)

    assert first.created and first.transaction_id and first.transaction_id.startswith("txn_")
    assert [(r.transaction_id, r.created, r.error) for r in again] == [
        (first.transaction_id, False, None)
    ] * 2
    assert conn.execute("SELECT count(*) FROM ledger_entries").fetchone() == entries_before
    assert again[0].merchant_balances == first.merchant_balances
    assert store.merchant_balances(conn, merchant)["usd"].version == 1


def test_a_repost_with_different_entries_is_a_conflict(conn: psycopg.Connection[Any], merchant: str) -> None:
    payment_id = ref("ch")
    [first] = store.post_batch(conn, [capture(merchant, 1000, payment_id=payment_id)], shard=0)
    [conflict] = store.post_batch(conn, [capture(merchant, 999, payment_id=payment_id)], shard=0)
    assert conflict.error_code == "idempotency_conflict"
    assert conflict.transaction_id == first.transaction_id and not conflict.created
    assert store.merchant_balances(conn, merchant)["usd"].available == 1000 - 29


def test_duplicates_within_one_batch_are_written_once(conn: psycopg.Connection[Any], merchant: str) -> None:
    posting = capture(merchant, 700)
    results = store.post_batch(conn, [posting, posting, posting], shard=0)
    assert [r.created for r in results] == [True, False, False]
    assert len({r.transaction_id for r in results}) == 1
    assert count_transactions(conn, posting.external_ref) == 1


def test_balances_and_versions_follow_each_posting(conn: psycopg.Connection[Any], merchant: str) -> None:
    postings = [capture(merchant, 1000), capture(merchant, 500, "eur"), capture(merchant, 2000)]
    results = store.post_batch(conn, postings, shard=0)
    assert results[0].merchant_balances == {"usd": store.MerchantBalance("usd", 971, 1)}
    assert results[1].merchant_balances == {"eur": store.MerchantBalance("eur", 485, 1)}
    assert results[2].merchant_balances == {"usd": store.MerchantBalance("usd", 971 + 1942, 2)}

    refund = refund_posting(ref("re"), merchant, Money(1000, "usd"), Money(29, "usd"))
    [refunded] = store.post_batch(conn, [refund], shard=0)
    assert refunded.merchant_balances == {"usd": store.MerchantBalance("usd", 1942, 3)}
    assert store.merchant_balances(conn, merchant) == {
        "eur": store.MerchantBalance("eur", 485, 1),
        "usd": store.MerchantBalance("usd", 1942, 3),
    }


def test_house_accounts_have_one_shard_per_writer(conn: psycopg.Connection[Any]) -> None:
    currency = "kwd"  # a currency no other test posts house entries in through shards 5 and 6
    merchant = f"acct_{uuid.uuid4().hex[:10]}"
    store.post_batch(conn, [capture(merchant, 10_000, currency)], shard=5)
    store.post_batch(
        conn, [capture(merchant, 20_000, currency), capture(merchant, 30_000, currency)], shard=6
    )

    rows = conn.execute(
        """
        SELECT a.name, a.merchant_id, a.shard, b.debits, b.credits, b.version
          FROM accounts a JOIN account_balances b ON b.account_id = a.id
         WHERE a.currency = %s AND (a.merchant_id = %s OR (a.merchant_id IS NULL AND a.shard IN (5, 6)))
         ORDER BY a.name, a.shard
        """,
        (currency, merchant),
    ).fetchall()
    by_key = {(name, shard): (debits, credits, version) for name, _m, shard, debits, credits, version in rows}
    assert by_key[("psp_receivable", 5)][0] - by_key[("psp_receivable", 5)][1] >= 10_000
    assert by_key[("psp_receivable", 6)][0] - by_key[("psp_receivable", 6)][1] >= 50_000
    assert {shard for (name, shard) in by_key if name == "merchant_payable"} == {0}
    assert by_key[("merchant_payable", 0)] == (0, 60_000 - 290 - 580 - 870, 3)
    assert store.trial_balance(conn)[currency]["balanced"]


def test_require_funds_refuses_an_overdraft(conn: psycopg.Connection[Any], merchant: str) -> None:
    store.post_batch(conn, [capture(merchant, 1000)], shard=0)  # 971 available
    too_much = payout_posting(ref("po"), merchant, Money(972, "usd"))
    exact = payout_posting(ref("po"), merchant, Money(971, "usd"))
    refused, paid = store.post_batch(conn, [too_much, exact], shard=0)
    assert refused.error_code == "balance_insufficient" and refused.transaction_id is None
    assert paid.created and paid.merchant_balances["usd"].available == 0
    # the funds check sees the batch's earlier postings: each of these fits alone, not both together
    store.post_batch(conn, [capture(merchant, 1000)], shard=0)  # 971 available again
    first, second = store.post_batch(
        conn,
        [
            payout_posting(ref("po"), merchant, Money(600, "usd")),
            payout_posting(ref("po"), merchant, Money(600, "usd")),
        ],
        shard=0,
    )
    assert first.created and first.merchant_balances["usd"].available == 371
    assert second.error_code == "balance_insufficient"
    assert store.merchant_balances(conn, merchant)["usd"].available == 371
    store.post_batch(conn, [payout_posting(ref("po"), merchant, Money(371, "usd"))], shard=0)
    # without require_funds a debit may take the balance below zero (a refund after a payout)
    refund = refund_posting(ref("re"), merchant, Money(1000, "usd"), Money(29, "usd"))
    [refunded] = store.post_batch(conn, [refund], shard=0)
    assert refunded.created and refunded.merchant_balances["usd"].available == -971


def test_transaction_entries_read_back_what_was_posted(conn: psycopg.Connection[Any], merchant: str) -> None:
    posting = Posting(
        kind="capture",
        external_ref=ref("ch"),
        merchant_id=merchant,
        entries=(
            debit(AccountRef("psp_receivable", "usd"), Money(1000, "usd")),
            credit(AccountRef("merchant_payable", "usd", merchant), Money(970, "usd")),
            credit(AccountRef("platform_fees", "usd"), Money(30, "usd")),
            debit(AccountRef("psp_receivable", "jpy"), Money(500, "jpy")),
            credit(AccountRef("merchant_payable", "jpy", merchant), Money(500, "jpy")),
        ),
        posting_date=date(2001, 5, 17),
    )
    [result] = store.post_batch(conn, [posting], shard=0)
    assert result.transaction_id is not None
    assert store.transaction_entries(conn, result.transaction_id) == list(posting.entries)
    assert set(result.merchant_balances) == {"usd", "jpy"}
    assert conn.execute(
        "SELECT posting_date FROM ledger_transactions WHERE id = %s", (result.transaction_id,)
    ).fetchone() == (date(2001, 5, 17),)
    assert store.transaction_entries(conn, "txn_unknown") == []
    assert store.transaction_for(conn, "capture", posting.external_ref) == result.transaction_id
    assert store.transaction_for(conn, "refund", posting.external_ref) is None


def test_trial_balance_and_invariants_hold(conn: psycopg.Connection[Any], merchant: str) -> None:
    store.post_batch(conn, [capture(merchant, 1234), capture(merchant, 99, "gbp")], shard=2)
    trial = store.trial_balance(conn)
    assert trial and all(line["balanced"] and line["debits"] == line["credits"] for line in trial.values())
    assert invariants.unbalanced_transactions(conn) == 0
    assert invariants.ledger_totals_balanced(conn) == 0
    assert invariants.balances_match_entries(conn) == 0
    assert invariants.wallet_mismatches(conn, {merchant: {"usd": 1234 - 36, "gbp": 99 - 3}}) == 0
    assert invariants.wallet_mismatches(conn, {merchant: {"usd": 1234 - 36}}) == 1  # gbp missing
    assert invariants.wallet_mismatches(conn, {merchant: {"usd": 1, "gbp": 99 - 3, "eur": 5}}) == 2
    assert invariants.wallet_mismatches(conn, {"acct_nobody": {"usd": 0}}) == 0
    assert invariants.wallet_mismatches(conn, {}) == 0


# -- the set-based path and the posting-at-a-time path agree ------------------------------------------------

KINDS = ("capture", "refund", "payout", "dispute_hold", "dispute_release", "settlement")
Operation = tuple[str, int, int, str, int]

operation = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 1),  # which of the two merchants
    st.integers(1, 5_000),
    st.sampled_from(["usd", "eur"]),
    st.integers(0, 3),  # 0: a new key; k > 0: repeat the key of the k-th operation before this one
)


def build(kind: str, key: str, merchant: str, amount: int, currency: str) -> Posting:
    money = Money(amount, currency)
    if kind == "capture":
        return capture_posting(key, merchant, money, fee_for(money, 290))
    if kind == "refund":
        return refund_posting(key, merchant, money, Money(0, currency))
    if kind == "payout":
        return payout_posting(key, merchant, money)
    if kind == "dispute_hold":
        return dispute_hold_posting(key, merchant, money)
    if kind == "dispute_release":
        return dispute_release_posting(key, merchant, money)
    return settlement_posting(key, money)


def post_each(
    conn: psycopg.Connection[Any], postings: list[Posting], shard: int
) -> list[store.PostingResult]:
    documents = [store.posting_document(p) for p in postings]
    rows = conn.execute("SELECT * FROM ledger_post_batch_each(%s, %s)", (Jsonb(documents), shard)).fetchall()
    return store._results(rows)


def play(
    conn: psycopg.Connection[Any],
    post: Callable[[psycopg.Connection[Any], list[Posting], int], list[store.PostingResult]],
    shard: int,
    batches: list[list[Operation]],
) -> list[list[tuple[Any, ...]]]:
    """Post ``batches`` for two fresh merchants on house shard ``shard``; what a caller sees of each result,
    with the world's own names and ids left out."""
    tag = uuid.uuid4().hex[:8]
    merchants = [f"acct_eq_{tag}_{i}" for i in range(2)]
    keys: list[str] = []
    seen = []
    for ops in batches:
        postings = []
        for kind, who, amount, currency, repeat in ops:
            key = keys[-repeat] if 0 < repeat <= len(keys) else f"eq_{tag}_{len(keys)}"
            keys.append(key)
            postings.append(build(kind, key, merchants[who], amount, currency))
        seen.append(
            [
                (
                    r.created,
                    r.error_code,
                    r.transaction_id is None,
                    sorted((c, b.available, b.version) for c, b in r.merchant_balances.items()),
                )
                for r in post(conn, postings, shard)
            ]
        )
    return seen


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opening=st.lists(operation, max_size=6), batch=st.lists(operation, min_size=4, max_size=14))
def test_the_set_based_path_answers_like_the_posting_at_a_time_path(
    conn: psycopg.Connection[Any], opening: list[Operation], batch: list[Operation]
) -> None:
    """Two mirrored worlds (own merchants, own house shard) get the same batches: one through
    ``ledger_post_batch`` (set-based whenever it can be), one posting by posting. Callers cannot tell them
    apart, and both ledgers stay consistent."""
    at_once = play(conn, store.post_batch, 40, [opening, batch])
    one_by_one = play(conn, post_each, 41, [opening, batch])
    assert at_once == one_by_one
    assert invariants.balances_match_entries(conn) == 0
    assert invariants.unbalanced_transactions(conn) == 0


def test_a_clean_batch_is_written_at_once_and_a_conflict_is_not(
    conn: psycopg.Connection[Any], merchant: str
) -> None:
    first, second = capture(merchant, 1000), capture(merchant, 2000)
    documents = Jsonb([store.posting_document(p) for p in (first, second)])
    rows = conn.execute("SELECT created FROM ledger_post_batch_at_once(%s, 0)", (documents,)).fetchall()
    assert rows == [(True,), (True,)]
    # a repost with the same entries stays on the set-based path...
    rows = conn.execute("SELECT created FROM ledger_post_batch_at_once(%s, 0)", (documents,)).fetchall()
    assert rows == [(False,), (False,)]
    # ...a repost with other entries, or a refused posting, sends the batch posting by posting
    changed = store.posting_document(capture(merchant, 1500, payment_id=first.external_ref))
    with pytest.raises(psycopg.Error, match="conflicting repost") as refused:
        conn.execute("SELECT * FROM ledger_post_batch_at_once(%s, 0)", (Jsonb([changed]),))
    assert refused.value.sqlstate == "PY002"
    overdraft = payout_posting(ref("po"), merchant, Money(10_000, "usd"))
    with pytest.raises(psycopg.Error, match="overdraws usd"):
        conn.execute(
            "SELECT * FROM ledger_post_batch_at_once(%s, 0)", (Jsonb([store.posting_document(overdraft)]),)
        )
    assert count_transactions(conn, overdraft.external_ref) == 0


def test_after_a_set_based_batch_the_deferred_checks_are_back_on(
    conn: psycopg.Connection[Any], merchant: str
) -> None:
    """The batch lowers the per-row checks only for its own, already checked rows: an entry written by hand
    later in the same database transaction is checked at commit as usual."""
    postings = [capture(merchant, 1000 + i) for i in range(4)]
    with pytest.raises(psycopg.errors.CheckViolation, match="does not balance"), conn.transaction():
        results = store.post_batch(conn, postings, shard=0)
        assert all(r.created for r in results)
        txn = results[0].transaction_id
        conn.execute(
            """
            INSERT INTO ledger_entries (transaction_id, account_id, direction, amount, currency, posting_date)
            SELECT t.id, a.id, 'debit', 1, 'usd', t.posting_date
              FROM ledger_transactions t, accounts a
             WHERE t.id = %s AND a.name = 'merchant_payable' AND a.merchant_id = %s
            """,
            (txn, merchant),
        )
    assert all(count_transactions(conn, p.external_ref) == 0 for p in postings)
    assert invariants.balances_match_entries(conn) == 0


def test_what_a_posting_completes_commits_with_it_or_not_at_all(database_url: str, merchant: str) -> None:
    """``Posting.completes`` runs in the batch's transaction, only for the postings that were written, and
    says whether it took effect."""
    table = f"completed_{uuid.uuid4().hex[:8]}"
    mark = f"INSERT INTO {table} (ref) VALUES (%(ref)s) ON CONFLICT DO NOTHING RETURNING ref"
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (ref text PRIMARY KEY)")

    def capture(ref: str, amount: int) -> Posting:
        posting = capture_posting(ref, merchant, Money(amount, "usd"), Money(0, "usd"))
        return dataclasses.replace(posting, completes=Statement(mark, {"ref": ref}))

    first, second = f"ch_{uuid.uuid4().hex[:10]}", f"ch_{uuid.uuid4().hex[:10]}"

    async def post(postings: list[Posting]) -> list[store.PostingResult]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
            return await store.post_batch_async(aconn, postings, shard=0)

    written = asyncio.run(post([capture(first, 100), capture(second, 200)]))
    again = asyncio.run(post([capture(first, 100), capture(second, 999)]))  # a repost, and a conflicting one

    assert [r.completed for r in written] == [True, True]
    assert again[0].ok and not again[0].created and again[0].completed is False  # ran, found its row there
    assert again[1].error_code == "idempotency_conflict" and again[1].completed is None  # refused: not run
    with psycopg.connect(database_url) as check:
        assert sorted(r[0] for r in check.execute(f"SELECT ref FROM {table}")) == sorted([first, second])
