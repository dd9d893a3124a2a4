"""The wallet without Ray, on a real ledger writer and Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import pytest

from actors.ledger_writer import LedgerWriter
from actors.wallet import InsufficientFunds, Ledger, Wallet
from actors.wallet_host import LedgerReads
from ledger import invariants, store
from ledger.postings import Posting, capture_posting, fee_for, payout_posting
from ledger.store import PostingResult
from payray.errors import ClientError, DependencyFailure
from payray.money import Money

T = TypeVar("T")


class Parts:
    """A real ledger writer and the reads a wallet host makes, on the test database."""

    def __init__(self, database_url: str) -> None:
        self.writer = LedgerWriter(database_url, shard=3)
        self.reads = LedgerReads(database_url, "payray-test-wallet")

    def wallet(self, merchant: str, ledger: Ledger | None = None) -> Wallet:
        return Wallet(merchant, ledger or self.writer, self.reads)


def run(scenario: Callable[[Parts], Awaitable[T]], database_url: str) -> T:
    async def main() -> T:
        parts = Parts(database_url)
        try:
            return await scenario(parts)
        finally:
            await parts.writer.close()
            await parts.reads.close()

    return asyncio.run(main())


def new_merchant() -> str:
    return f"acct_wal_{uuid.uuid4().hex[:10]}"


def capture(merchant: str, amount: int, currency: str = "usd") -> Posting:
    money = Money(amount, currency)
    return capture_posting(f"ch_{uuid.uuid4().hex[:12]}", merchant, money, fee_for(money, 290))


def funding(merchant: str, amount: int) -> Posting:
    """A capture with no fee: the merchant's balance grows by exactly ``amount``."""
    return capture_posting(f"ch_{uuid.uuid4().hex[:12]}", merchant, Money(amount, "usd"), Money(0, "usd"))


def payout(merchant: str, amount: int, payout_id: str | None = None) -> Posting:
    return payout_posting(payout_id or f"po_{uuid.uuid4().hex[:12]}", merchant, Money(amount, "usd"))


def ledger_balances(database_url: str, merchant: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return {c: b.available for c, b in store.merchant_balances(conn, merchant).items()}


class FlakyLedger:
    """A ledger that fails on demand, after (or instead of) reaching the real writer."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self.fail_after_posting = False

    async def post(self, posting: Posting) -> PostingResult:
        result = await self.writer.post(posting)
        if self.fail_after_posting:
            raise ConnectionError("the answer was lost on the way back")
        return result

    async def post_many(self, postings: list[Posting]) -> list[PostingResult]:
        return [await self.post(posting) for posting in postings]


def test_credits_update_the_wallet_and_match_the_ledger(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> tuple[dict[str, int], dict[str, int]]:
        wallet = parts.wallet(merchant)
        assert await wallet.balances() == {}
        postings = [capture(merchant, 1000 + i) for i in range(50)] + [capture(merchant, 700, "eur")]
        results = await asyncio.gather(*(wallet.post(p) for p in postings))
        assert all(r.created for r in results)
        reborn = parts.wallet(merchant)  # a restarted actor rebuilds from Postgres
        return await wallet.balances(), await reborn.balances()

    held, rebuilt = run(scenario, database_url)
    expected_usd = sum(1000 + i - Money(1000 + i, "usd").fraction_bps(290).amount for i in range(50))
    assert (
        held == rebuilt == ledger_balances(database_url, merchant) == {"eur": 700 - 20, "usd": expected_usd}
    )
    with psycopg.connect(database_url) as conn:
        assert invariants.wallet_mismatches(conn, {merchant: held}) == 0


def test_concurrent_debits_never_overdraw(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> list[PostingResult | BaseException]:
        wallet = parts.wallet(merchant)
        await wallet.post(funding(merchant, 10_000))
        assert await wallet.balances() == {"usd": 10_000}
        return await asyncio.gather(
            *(wallet.debit(payout(merchant, 1000), Money(1000, "usd")) for _ in range(30)),
            return_exceptions=True,
        )

    outcomes = run(scenario, database_url)
    paid = [o for o in outcomes if isinstance(o, PostingResult)]
    refused = [o for o in outcomes if isinstance(o, InsufficientFunds)]
    assert len(paid) == 10 and all(r.created for r in paid)
    assert len(refused) == 20
    assert ledger_balances(database_url, merchant) == {"usd": 0}


def test_insufficient_funds_is_a_client_error_with_its_code(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> None:
        wallet = parts.wallet(merchant)
        with pytest.raises(InsufficientFunds) as refused:
            await wallet.debit(payout(merchant, 1), Money(1, "usd"))
        assert isinstance(refused.value, ClientError)
        assert refused.value.code == "balance_insufficient" and refused.value.status == 400

    run(scenario, database_url)
    assert ledger_balances(database_url, merchant) == {}


def test_a_retried_debit_answers_its_first_result_even_when_funds_are_gone(database_url: str) -> None:
    merchant = new_merchant()
    payout_id = f"po_{uuid.uuid4().hex[:12]}"

    async def scenario(parts: Parts) -> tuple[PostingResult, PostingResult]:
        wallet = parts.wallet(merchant)
        await wallet.post(funding(merchant, 1000))  # 1000 available
        first = await wallet.debit(payout(merchant, 1000, payout_id), Money(1000, "usd"))
        retried = await parts.wallet(merchant).debit(
            payout(merchant, 1000, payout_id), Money(1000, "usd")
        )
        return first, retried

    first, retried = run(scenario, database_url)
    assert first.created and not retried.created
    assert retried.transaction_id == first.transaction_id and retried.error is None
    assert ledger_balances(database_url, merchant) == {"usd": 0}


def test_postgres_refuses_what_a_stale_wallet_would_allow(database_url: str) -> None:
    """Two incarnations of one wallet (an old one still running while its successor starts) each believe
    the whole balance is theirs; the database's funds check keeps the merchant from going negative."""
    merchant = new_merchant()

    async def scenario(parts: Parts) -> tuple[PostingResult | BaseException, ...]:
        await parts.wallet(merchant).post(funding(merchant, 1000))
        old, new = parts.wallet(merchant), parts.wallet(merchant)
        assert await old.balances() == await new.balances() == {"usd": 1000}
        return await asyncio.gather(
            old.debit(payout(merchant, 1000), Money(1000, "usd")),
            new.debit(payout(merchant, 1000), Money(1000, "usd")),
            return_exceptions=True,
        )

    outcomes = run(scenario, database_url)
    assert sum(isinstance(o, PostingResult) and o.created for o in outcomes) == 1
    assert sum(isinstance(o, InsufficientFunds) for o in outcomes) == 1
    assert ledger_balances(database_url, merchant) == {"usd": 0}


def test_a_ledger_failure_resyncs_the_wallet_from_postgres(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> dict[str, int]:
        ledger = FlakyLedger(parts.writer)
        wallet = parts.wallet(merchant, ledger)
        await wallet.post(funding(merchant, 1000))
        ledger.fail_after_posting = True
        with pytest.raises(DependencyFailure):
            await wallet.post(funding(merchant, 2000))  # posted, but the answer is lost
        ledger.fail_after_posting = False
        return await wallet.balances()

    assert run(scenario, database_url) == {"usd": 1000 + 2000} == ledger_balances(database_url, merchant)


def test_a_refused_posting_resyncs_and_reports_its_error(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> tuple[PostingResult, dict[str, int]]:
        wallet = parts.wallet(merchant)
        first = funding(merchant, 1000)
        await wallet.post(first)
        conflicting = capture_posting(first.external_ref, merchant, Money(5000, "usd"), Money(0, "usd"))
        result = await wallet.post(conflicting)
        return result, await wallet.balances()

    result, balances = run(scenario, database_url)
    assert result.error_code == "idempotency_conflict"
    assert balances == {"usd": 1000} == ledger_balances(database_url, merchant)


def test_a_wallet_only_takes_its_own_merchant_postings(database_url: str) -> None:
    async def scenario(parts: Parts) -> None:
        wallet = parts.wallet(new_merchant())
        with pytest.raises(ValueError):
            await wallet.post(capture(new_merchant(), 100))

    run(scenario, database_url)


def test_a_batch_of_credits_is_one_ledger_call_and_matches_the_ledger(database_url: str) -> None:
    merchant = new_merchant()

    postings = [funding(merchant, 100 + i) for i in range(30)]

    async def scenario(parts: Parts) -> tuple[list[PostingResult], dict[str, int]]:
        wallet = parts.wallet(merchant)
        results = await wallet.post_many(postings)
        again = await wallet.post_many(postings[:5])  # a retried batch posts nothing twice
        assert [r.created for r in again] == [False] * 5
        return results, await wallet.balances()

    results, held = run(scenario, database_url)
    assert [r.external_ref for r in results] == [p.external_ref for p in postings]
    assert all(r.created for r in results)
    assert held == ledger_balances(database_url, merchant) == {"usd": sum(100 + i for i in range(30))}


def test_a_batch_with_another_merchants_posting_is_refused_whole(database_url: str) -> None:
    merchant = new_merchant()

    async def scenario(parts: Parts) -> None:
        wallet = parts.wallet(merchant)
        with pytest.raises(ValueError, match="sent to the wallet of"):
            await wallet.post_many([funding(merchant, 100), funding(new_merchant(), 100)])

    run(scenario, database_url)
    assert ledger_balances(database_url, merchant) == {}
