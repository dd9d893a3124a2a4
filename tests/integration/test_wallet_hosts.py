"""Wallet hosts on a real Ray and Postgres: routing, shared batches, passivation, two owners and restarts."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import ray
from ray.actor import ActorHandle

from actors.wallet import InsufficientFunds
from actors.wallet_host import WalletHostActor, get_or_create_hosts
from ledger import invariants, store
from ledger.postings import Posting, capture_posting, payout_posting
from ledger.store import PostingResult
from payray.money import Money
from payray.slots import SlotMap

NAMESPACE = "payray-test"
HOSTS = 2
SLOTS = SlotMap(HOSTS)
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def hosts(ray_cluster: None, database_url: str) -> list[ActorHandle]:
    handles = get_or_create_hosts(database_url, HOSTS, NAMESPACE, cache_size=100_000, idle_s=600)
    assert get([h.ready.remote() for h in handles]) == [True] * HOSTS
    return handles


def a_host(database_url: str, name: str, index: int = 0, cache_size: int = 100_000) -> ActorHandle:
    """A host of its own (a second copy of host ``index``, or one with a small cache)."""
    handle: Any = WalletHostActor.options(name=name, namespace=NAMESPACE).remote(
        database_url, index, cache_size, 600.0
    )
    assert get(handle.ready.remote())
    return handle


def new_merchant() -> str:
    return f"acct_host_{uuid.uuid4().hex[:10]}"


def funding(merchant: str, amount: int) -> Posting:
    return capture_posting(f"ch_{uuid.uuid4().hex[:12]}", merchant, Money(amount, "usd"), Money(0, "usd"))


def payout(merchant: str, amount: int) -> Posting:
    return payout_posting(f"po_{uuid.uuid4().hex[:12]}", merchant, Money(amount, "usd"))


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


def get(refs: Any) -> Any:
    return ray.get(refs, timeout=TIMEOUT_S)


def eventually(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value


def process_of(actor: ActorHandle) -> int:
    return int(get(actor.__ray_call__.remote(lambda _self: os.getpid())))


def host_of(hosts: list[ActorHandle], merchant: str) -> ActorHandle:
    return hosts[SLOTS.host_of(merchant)]


def test_each_merchant_is_held_by_the_host_its_slot_names(hosts: list[ActorHandle]) -> None:
    merchants = [new_merchant() for _ in range(40)]
    get([host_of(hosts, m).post_many.remote([funding(m, 100)]) for m in merchants])

    held = [get(h.held_balances.remote()) for h in hosts]
    for m in merchants:
        owner = SLOTS.host_of(m)
        assert held[owner][m] == {"usd": 100}
        assert all(m not in held[i] for i in range(HOSTS) if i != owner)
    assert {SLOTS.host_of(m) for m in merchants} == set(range(HOSTS))


def test_many_merchants_share_one_hosts_batches_and_match_the_ledger(
    hosts: list[ActorHandle], database_url: str
) -> None:
    merchants = [new_merchant() for _ in range(300)]
    postings = [funding(m, 100 + i) for i in range(3) for m in merchants]
    host = hosts[0]
    mine = [p for p in postings if SLOTS.host_of(p.merchant_id or "") == 0]
    before = get(host.stats.remote())

    # calls of 20 postings each, each spanning many merchants, all in flight at once
    chunks = [mine[i : i + 20] for i in range(0, len(mine), 20)]
    answers = get([host.post_many.remote(c) for c in chunks])
    results: list[PostingResult] = [r for chunk in answers for r in chunk]

    assert [r.external_ref for r in results] == [p.external_ref for p in mine]
    assert all(r.created for r in results)
    after = get(host.stats.remote())
    assert after["writer_postings"] - before["writer_postings"] == len(mine)
    # batches span calls and merchants
    assert after["writer_batches"] - before["writer_batches"] < len(chunks)
    held: dict[str, dict[str, int]] = get(host.held_balances.remote())
    owned = {p.merchant_id for p in mine}
    with psycopg.connect(database_url) as conn:
        assert invariants.wallet_mismatches(conn, {m: held[m] for m in owned}) == 0
    assert times_posted(database_url, mine) == {p.external_ref: 1 for p in mine}


def test_concurrent_payouts_never_overdraw(hosts: list[ActorHandle], database_url: str) -> None:
    merchant = new_merchant()
    host = host_of(hosts, merchant)
    get(host.post_many.remote([funding(merchant, 10_000)]))

    refs = [host.debit.remote(payout(merchant, 700), Money(700, "usd")) for _ in range(40)]
    paid, refused = 0, 0
    for ref in refs:
        try:
            paid += get(ref).created
        except InsufficientFunds:
            refused += 1

    assert (paid, refused) == (14, 26)  # 14 x 700 = 9800 <= 10_000 < 15 x 700
    assert get(host.balances.remote(merchant)) == ledger_balances(database_url, merchant) == {"usd": 200}


def test_idle_wallets_are_passivated_within_the_bound_and_reload_from_the_ledger(database_url: str) -> None:
    host = a_host(database_url, f"small_host_{uuid.uuid4().hex[:6]}", cache_size=50)
    merchants = [new_merchant() for _ in range(400)]
    get([host.post_many.remote([funding(m, 10 + i)]) for i, m in enumerate(merchants)])

    stats = get(host.stats.remote())
    assert stats["wallets"] <= 50 and stats["passivated"] >= 350
    assert stats["wallets_created"] == 400
    # the first merchants went first; asked again, each comes back from the ledger, right
    for i, m in enumerate(merchants[:20]):
        assert get(host.balances.remote(m)) == {"usd": 10 + i} == ledger_balances(database_url, m)
    assert get(host.stats.remote())["wallets"] <= 50
    ray.kill(host)


def test_two_live_hosts_owning_one_merchant_neither_overdraw_nor_double_post_nor_lose_credit(
    database_url: str,
) -> None:
    """Ray may run two copies of a host during a restart: both serve the merchant, Postgres arbitrates."""
    first = a_host(database_url, f"owner_a_{uuid.uuid4().hex[:6]}")
    second = a_host(database_url, f"owner_b_{uuid.uuid4().hex[:6]}")  # the same index: the same shard
    merchant = new_merchant()
    credits = [funding(merchant, 1000) for _ in range(40)]
    paid = refused = 0
    for credit in credits:
        # the same credit through both owners, then each owner pays out what it believes it may
        get([first.post_many.remote([credit]), second.post_many.remote([credit])])
        for ref in [h.debit.remote(payout(merchant, 1500), Money(1500, "usd")) for h in (first, second)]:
            try:
                paid += get(ref).created
            except InsufficientFunds:
                refused += 1

    assert times_posted(database_url, credits) == {c.external_ref: 1 for c in credits}  # no double posting
    funded = 40 * 1000
    assert 0 < paid * 1500 <= funded and refused > 0  # no overdraft
    assert ledger_balances(database_url, merchant) == {"usd": funded - paid * 1500}  # no credit lost
    with psycopg.connect(database_url) as conn:
        assert invariants.balances_match_entries(conn) == 0
        (lowest,) = conn.execute(
            "SELECT min(running) FROM ("
            " SELECT sum(CASE direction WHEN 'credit' THEN amount ELSE -amount END)"
            " OVER (ORDER BY e.id) AS running"
            " FROM ledger_entries e JOIN accounts a ON a.id = e.account_id"
            " WHERE a.name = 'merchant_payable' AND a.merchant_id = %s) AS history",
            (merchant,),
        ).fetchone() or (0,)
    assert lowest >= 0  # not even for a moment
    # an owner's next posting brings it the balance row as it now is, whoever wrote it last
    for owner in (first, second):
        get(owner.post_many.remote([funding(merchant, 1)]))
        assert get(owner.balances.remote(merchant)) == ledger_balances(database_url, merchant)
    for owner in (first, second):
        ray.kill(owner)


def test_a_killed_host_restarts_serves_again_and_rebuilds_from_postgres(
    hosts: list[ActorHandle], database_url: str
) -> None:
    merchants = [new_merchant() for _ in range(30)]
    merchants = [m for m in merchants if SLOTS.host_of(m) == 1]
    host = hosts[1]
    postings = [funding(m, 10 + i) for i in range(20) for m in merchants]

    first_process = process_of(host)
    refs = [host.post_many.remote([p]) for p in postings[: len(postings) // 2]]
    get(refs[:5])
    killed_at = time.monotonic()
    ray.kill(host, no_restart=False)
    with ThreadPoolExecutor(1) as pool:  # the first answer after the kill, from a new call
        answered = pool.submit(lambda: get(host.balances.remote(merchants[0])) and time.monotonic())
        refs += [host.post_many.remote([p]) for p in postings[len(postings) // 2 :]]
        results = [r for batch in get(refs) for r in batch]
        back_after_s = (answered.result() or time.monotonic()) - killed_at

    assert all(r.error is None and r.transaction_id for r in results)
    assert times_posted(database_url, postings) == {p.external_ref: 1 for p in postings}
    for m in merchants:
        expected = {"usd": sum(10 + i for i in range(20))}
        assert ledger_balances(database_url, m) == expected
        assert eventually(lambda m=m, e=expected: get(host.balances.remote(m)) == e)
    assert process_of(host) != first_process
    print(f"host answered again {back_after_s:.2f} s after it was killed")
