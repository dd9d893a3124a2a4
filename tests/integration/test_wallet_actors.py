"""Wallet and ledger writer actors on a real Ray: routing, concurrency and restarts."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
import ray
from ray.actor import ActorHandle

from actors.ledger_pool import get_or_create_writers, writer_for, writer_index
from actors.wallet import InsufficientFunds, get_or_create_wallet
from ledger import invariants, store
from ledger.postings import Posting, capture_posting, payout_posting
from ledger.store import PostingResult
from payray.money import Money

NAMESPACE = "payray-test"
POOL_SIZE = 2
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def writers(ray_cluster: None, database_url: str) -> list[ActorHandle]:
    handles = get_or_create_writers(database_url, POOL_SIZE, NAMESPACE)
    assert get([w.ready.remote() for w in handles]) == [True] * POOL_SIZE
    return handles


def new_merchant() -> str:
    return f"acct_ray_{uuid.uuid4().hex[:10]}"


def funding(merchant: str, amount: int) -> Posting:
    return capture_posting(f"ch_{uuid.uuid4().hex[:12]}", merchant, Money(amount, "usd"), Money(0, "usd"))


def merchant_of(posting: Posting) -> str:
    assert posting.merchant_id is not None
    return posting.merchant_id


def ledger_balances(database_url: str, merchant: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return {c: b.available for c, b in store.merchant_balances(conn, merchant).items()}


def times_posted(database_url: str, postings: Sequence[Posting]) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT external_ref, count(*) FROM ledger_transactions WHERE external_ref = ANY(%s) GROUP BY 1",
            ([p.external_ref for p in postings],),
        ).fetchall()
    return dict(rows)


def eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """The first truthy value of ``check()``, polled until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value


def get(refs: Any) -> Any:
    return ray.get(refs, timeout=TIMEOUT_S)


def process_of(actor: ActorHandle) -> int:
    return int(get(actor.__ray_call__.remote(lambda _self: os.getpid())))


def total_stats(handles: Sequence[ActorHandle]) -> dict[str, float]:
    stats: list[dict[str, float]] = get([w.stats.remote() for w in handles])
    return {key: sum(s[key] for s in stats) for key in ("batches", "postings")}


def test_merchants_route_to_a_stable_writer() -> None:
    assert writer_index("acct_123", 4) == writer_index("acct_123", 4)
    assert {writer_index(f"acct_{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    assert writer_index("acct_123", 1) == 0
    assert writer_for(["a", "b", "c"], "acct_123") == ["a", "b", "c"][writer_index("acct_123", 3)]


def test_concurrent_credits_for_three_merchants_match_the_ledger(
    writers: list[ActorHandle], database_url: str
) -> None:
    merchants = [new_merchant() for _ in range(3)]
    wallets = {m: get_or_create_wallet(m, database_url, writers, NAMESPACE) for m in merchants}
    postings = [funding(m, 100 + i) for i in range(150) for m in merchants]
    before = total_stats(writers)

    results: list[PostingResult] = get([wallets[merchant_of(p)].credit.remote(p) for p in postings])

    assert all(r.created for r in results)
    expected = {"usd": sum(100 + i for i in range(150))}
    held: dict[str, dict[str, int]] = {m: get(wallets[m].balances.remote()) for m in merchants}
    for m in merchants:
        assert held[m] == ledger_balances(database_url, m) == expected
    with psycopg.connect(database_url) as conn:
        assert invariants.wallet_mismatches(conn, held) == 0
        assert invariants.balances_match_entries(conn) == 0
    after = total_stats(writers)
    assert after["postings"] - before["postings"] == len(postings)
    assert after["batches"] - before["batches"] < len(postings)
    assert times_posted(database_url, postings) == {p.external_ref: 1 for p in postings}


def test_concurrent_payouts_never_overdraw(writers: list[ActorHandle], database_url: str) -> None:
    merchant = new_merchant()
    wallet = get_or_create_wallet(merchant, database_url, writers, NAMESPACE)
    get(wallet.credit.remote(funding(merchant, 10_000)))

    refs = [
        wallet.debit.remote(
            payout_posting(f"po_{uuid.uuid4().hex[:12]}", merchant, Money(700, "usd")), Money(700, "usd")
        )
        for _ in range(40)
    ]
    paid, refused = 0, 0
    result: PostingResult
    for ref in refs:
        try:
            result = get(ref)
            paid += result.created
        except InsufficientFunds:
            refused += 1

    assert (paid, refused) == (14, 26)  # 14 x 700 = 9800 <= 10_000 < 15 x 700
    assert get(wallet.balances.remote()) == ledger_balances(database_url, merchant) == {"usd": 200}


def test_a_killed_wallet_restarts_and_rebuilds_from_postgres(
    writers: list[ActorHandle], database_url: str
) -> None:
    merchant = new_merchant()
    wallet = get_or_create_wallet(merchant, database_url, writers, NAMESPACE)
    postings = [funding(merchant, 10 + i) for i in range(300)]

    first_process = process_of(wallet)
    refs = [wallet.credit.remote(p) for p in postings[:200]]
    get(refs[:20])
    ray.kill(wallet, no_restart=False)
    refs += [wallet.credit.remote(p) for p in postings[200:]]
    get(refs)

    expected = {"usd": sum(10 + i for i in range(300))}
    assert times_posted(database_url, postings) == {p.external_ref: 1 for p in postings}
    assert ledger_balances(database_url, merchant) == expected
    same_wallet = ray.get_actor(f"wallet:{merchant}", namespace=NAMESPACE)
    assert eventually(lambda: get(same_wallet.balances.remote()) == expected)
    assert process_of(same_wallet) != first_process


def test_a_killed_writer_restarts_and_postings_land_exactly_once(
    writers: list[ActorHandle], database_url: str
) -> None:
    merchant = new_merchant()
    wallet = get_or_create_wallet(merchant, database_url, writers, NAMESPACE)
    postings = [funding(merchant, 1 + i) for i in range(300)]

    writer = writer_for(writers, merchant)
    first_process = process_of(writer)
    refs = [wallet.credit.remote(p) for p in postings]
    get(refs[:10])
    ray.kill(writer, no_restart=False)
    results: list[PostingResult] = get(refs)

    assert all(r.error is None and r.transaction_id for r in results)
    assert times_posted(database_url, postings) == {p.external_ref: 1 for p in postings}
    expected = {"usd": sum(1 + i for i in range(300))}
    assert ledger_balances(database_url, merchant) == expected
    assert eventually(lambda: get(wallet.balances.remote()) == expected)
    assert get(writer.ready.remote())
    assert process_of(writer) != first_process
