"""The ledger writer without Ray: group commit, retries, reconnection and isolation of bad postings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import pytest

from actors.ledger_writer import LedgerWriter
from ledger import invariants, store
from ledger.postings import Posting, capture_posting, fee_for
from ledger.store import PostingResult
from payray.errors import DependencyFailure
from payray.money import Money

T = TypeVar("T")


def run(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coroutine_factory()

    return asyncio.run(main())


def captures(n: int, merchants: int = 20, prefix: str = "ch") -> list[Posting]:
    batch = uuid.uuid4().hex[:8]
    postings = []
    for i in range(n):
        money = Money(1000 + i, "usd")
        postings.append(
            capture_posting(
                f"{prefix}_{batch}_{i}", f"acct_w{batch}_{i % merchants}", money, fee_for(money, 290)
            )
        )
    return postings


def transactions_for(database_url: str, postings: Sequence[Posting]) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT external_ref, count(*) FROM ledger_transactions"
            " WHERE kind = 'capture' AND external_ref = ANY(%s) GROUP BY external_ref",
            ([p.external_ref for p in postings],),
        ).fetchall()
    return dict(rows)


def test_concurrent_postings_are_group_committed_once_each(database_url: str) -> None:
    postings = captures(500)

    async def scenario() -> tuple[list[PostingResult], dict[str, float]]:
        writer = LedgerWriter(database_url, shard=0)
        try:
            results = await asyncio.gather(*(writer.post(p) for p in postings))
            return results, await writer.stats()
        finally:
            await writer.close()

    results, stats = run(scenario)

    assert all(r.created and r.error is None for r in results)
    assert [r.external_ref for r in results] == [p.external_ref for p in postings]
    assert stats["postings"] == 500
    assert stats["batches"] < 10, stats
    assert stats["mean_batch_size"] > 50
    assert transactions_for(database_url, postings) == {p.external_ref: 1 for p in postings}
    with psycopg.connect(database_url) as conn:
        assert all(line["balanced"] for line in store.trial_balance(conn).values())
        assert invariants.unbalanced_transactions(conn) == 0
        assert invariants.balances_match_entries(conn) == 0


def test_a_batch_never_exceeds_max_batch(database_url: str) -> None:
    postings = captures(100)

    async def scenario() -> dict[str, float]:
        writer = LedgerWriter(database_url, shard=0, max_batch=16, max_wait_ms=20)
        try:
            await asyncio.gather(*(writer.post(p) for p in postings))
            return await writer.stats()
        finally:
            await writer.close()

    stats = run(scenario)
    assert stats["largest_batch"] == 16
    assert stats["batches"] >= 7


def test_reposts_answer_the_first_transaction(database_url: str) -> None:
    postings = captures(30)

    async def scenario() -> tuple[list[PostingResult], list[PostingResult]]:
        writer = LedgerWriter(database_url, shard=1)
        try:
            first = await asyncio.gather(*(writer.post(p) for p in postings))
            again = await asyncio.gather(*(writer.post(p) for p in postings + postings))
            return first, again
        finally:
            await writer.close()

    first, again = run(scenario)
    ids = [r.transaction_id for r in first]
    assert all(r.created for r in first)
    assert [r.transaction_id for r in again] == ids + ids
    assert not any(r.created for r in again)
    assert transactions_for(database_url, postings) == {p.external_ref: 1 for p in postings}


def test_the_writer_reconnects_after_losing_its_connection(database_url: str) -> None:
    shard = 7  # identifies this writer's backend by its application_name
    before, after = captures(20), captures(50)

    async def scenario() -> tuple[list[PostingResult], dict[str, float]]:
        writer = LedgerWriter(database_url, shard=shard)
        try:
            assert await writer.ready()
            await asyncio.gather(*(writer.post(p) for p in before))
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (f"payray-ledger-writer-{shard}",),
                )
            results = await asyncio.gather(*(writer.post(p) for p in after))
            return results, await writer.stats()
        finally:
            await writer.close()

    results, stats = run(scenario)
    assert all(r.created for r in results)
    assert stats["reconnects"] >= 1
    assert transactions_for(database_url, before + after) == {p.external_ref: 1 for p in before + after}


def test_a_batch_refused_as_a_whole_is_retried_in_halves(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the whole batch (as at COMMIT) must not sink the postings that are fine."""
    postings = captures(40)
    poison = postings[13].external_ref
    real_post_batch = store.post_batch_async

    async def post_batch_refusing_poison(
        conn: Any, batch: Sequence[Posting], shard: int
    ) -> list[PostingResult]:
        if any(p.external_ref == poison for p in batch):
            raise psycopg.errors.CheckViolation("ledger transaction does not balance")
        return await real_post_batch(conn, batch, shard)

    monkeypatch.setattr(store, "post_batch_async", post_batch_refusing_poison)

    async def scenario() -> tuple[list[PostingResult], dict[str, float]]:
        writer = LedgerWriter(database_url, shard=0, max_wait_ms=50)
        try:
            results = await asyncio.gather(*(writer.post(p) for p in postings))
            return results, await writer.stats()
        finally:
            await writer.close()

    results, stats = run(scenario)
    by_ref = {r.external_ref: r for r in results}
    assert by_ref[poison].error_code == "23514" and not by_ref[poison].created
    assert all(r.created for ref, r in by_ref.items() if ref != poison)
    assert stats["splits"] >= 1 and stats["refused"] == 1
    expected = {p.external_ref: 1 for p in postings if p.external_ref != poison}
    assert transactions_for(database_url, postings) == expected


def test_transient_failures_retry_the_same_batch(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    postings = captures(10)
    real_post_batch = store.post_batch_async
    failures = iter(
        [psycopg.errors.DeadlockDetected("deadlock"), psycopg.errors.SerializationFailure("retry")]
    )

    async def flaky(conn: Any, batch: Sequence[Posting], shard: int) -> list[PostingResult]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await real_post_batch(conn, batch, shard)

    monkeypatch.setattr(store, "post_batch_async", flaky)

    async def scenario() -> tuple[list[PostingResult], dict[str, float]]:
        writer = LedgerWriter(database_url, shard=0, max_wait_ms=50)
        try:
            results = await asyncio.gather(*(writer.post(p) for p in postings))
            return results, await writer.stats()
        finally:
            await writer.close()

    results, stats = run(scenario)
    assert all(r.created for r in results)
    assert stats["retries"] == 2 and stats["splits"] == 0


def test_an_unreachable_database_fails_callers_with_a_dependency_failure() -> None:
    async def scenario() -> None:
        writer = LedgerWriter(
            "host=/nonexistent dbname=none connect_timeout=1", shard=0, reconnect_timeout_s=0.3
        )
        try:
            with pytest.raises(DependencyFailure):
                await writer.post(captures(1)[0])
        finally:
            await writer.close()

    run(scenario)
