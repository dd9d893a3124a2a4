"""Postings: which entries each business event makes, and the refusal of anything unbalanced."""

from __future__ import annotations

import pickle
from collections import defaultdict
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.postings import (
    CHART,
    AccountRef,
    Entry,
    InvalidPosting,
    Posting,
    capture_posting,
    credit,
    debit,
    dispute_hold_posting,
    dispute_loss_posting,
    dispute_release_posting,
    fee_for,
    payout_posting,
    refund_fee_share,
    refund_posting,
    refund_reversal_posting,
    settlement_posting,
)
from payray.money import CURRENCY_EXPONENTS, MAX_CHARGE_AMOUNT, CurrencyMismatch, Money

currencies = st.sampled_from(sorted(CURRENCY_EXPONENTS))
positive = st.integers(min_value=1, max_value=10**12)
bps = st.integers(min_value=0, max_value=20_000)


def net_by_currency(posting: Posting) -> dict[str, int]:
    net: dict[str, int] = defaultdict(int)
    for entry in posting.entries:
        net[entry.amount.currency] += entry.amount.amount * (1 if entry.direction == "debit" else -1)
    return dict(net)


def lines(posting: Posting) -> dict[tuple[str, str], int]:
    return {(e.account.name, e.direction): e.amount.amount for e in posting.entries}


def assert_balanced(posting: Posting) -> None:
    assert len(posting.entries) >= 2
    assert all(entry.amount.amount > 0 for entry in posting.entries)
    assert all(n == 0 for n in net_by_currency(posting).values())


@given(positive, currencies, bps)
def test_fee_is_never_negative_nor_more_than_the_amount(amount: int, currency: str, fee_bps: int) -> None:
    fee = fee_for(Money(amount, currency), fee_bps)
    assert fee.currency == currency
    assert 0 <= fee.amount <= amount


@given(positive, currencies, bps, bps)
def test_fee_grows_with_the_rate(amount: int, currency: str, low: int, high: int) -> None:
    low, high = sorted((low, high))
    assert fee_for(Money(amount, currency), low) <= fee_for(Money(amount, currency), high)


def test_fee_examples_and_refusals() -> None:
    assert fee_for(Money(1000, "usd"), 290) == Money(29, "usd")
    assert fee_for(Money(1, "usd"), 290) == Money(0, "usd")
    assert fee_for(Money(100, "usd"), 50_000) == Money(100, "usd")
    with pytest.raises(ValueError):
        fee_for(Money(100, "usd"), -1)


@given(st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT), currencies, bps)
def test_every_capture_balances(amount: int, currency: str, fee_bps: int) -> None:
    money = Money(amount, currency)
    fee = fee_for(money, fee_bps)
    posting = capture_posting("ch_1", "acct_1", money, fee)
    assert_balanced(posting)
    assert posting.kind == "capture" and posting.external_ref == "ch_1"
    got = lines(posting)
    assert got[("psp_receivable", "debit")] == amount
    assert got.get(("merchant_payable", "credit"), 0) == amount - fee.amount
    assert got.get(("platform_fees", "credit"), 0) == fee.amount


@given(st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT), currencies, bps)
def test_every_refund_is_the_reverse_of_its_capture(amount: int, currency: str, fee_bps: int) -> None:
    money = Money(amount, currency)
    fee = fee_for(money, fee_bps)
    capture = capture_posting("ch_1", "acct_1", money, fee)
    refund = refund_posting("re_1", "acct_1", money, fee)
    assert_balanced(refund)
    flipped = {"debit": "credit", "credit": "debit"}
    assert lines(refund) == {(name, flipped[d]): n for (name, d), n in lines(capture).items()}


@given(positive, currencies)
def test_payouts_settlements_and_disputes_balance(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    for posting in (
        payout_posting("po_1", "acct_1", money),
        settlement_posting("stl_1", money),
        dispute_hold_posting("dp_1", "acct_1", money),
        dispute_release_posting("dp_1", "acct_1", money),
        dispute_loss_posting("dp_1", "acct_1", money),
    ):
        assert_balanced(posting)


def test_zero_lines_are_omitted() -> None:
    no_fee = capture_posting("ch_1", "acct_1", Money(500, "usd"), Money(0, "usd"))
    assert lines(no_fee) == {("psp_receivable", "debit"): 500, ("merchant_payable", "credit"): 500}
    all_fee = capture_posting("ch_2", "acct_1", Money(500, "usd"), Money(500, "usd"))
    assert lines(all_fee) == {("psp_receivable", "debit"): 500, ("platform_fees", "credit"): 500}


def test_payout_asks_the_database_to_refuse_an_overdraft() -> None:
    payout = payout_posting("po_1", "acct_1", Money(100, "usd"))
    assert payout.require_funds
    assert lines(payout) == {("merchant_payable", "debit"): 100, ("payouts_in_transit", "credit"): 100}
    assert not capture_posting("ch_1", "acct_1", Money(100, "usd"), Money(3, "usd")).require_funds


def test_builders_refuse_bad_amounts_and_fees() -> None:
    with pytest.raises(ValueError):
        capture_posting("ch_1", "acct_1", Money(0, "usd"), Money(0, "usd"))
    with pytest.raises(ValueError):
        capture_posting("ch_1", "acct_1", Money(100, "usd"), Money(101, "usd"))
    with pytest.raises(ValueError):
        capture_posting("ch_1", "acct_1", Money(100, "usd"), Money(-1, "usd"))
    with pytest.raises(CurrencyMismatch):
        capture_posting("ch_1", "acct_1", Money(100, "usd"), Money(3, "eur"))
    with pytest.raises(ValueError):
        payout_posting("po_1", "acct_1", Money(-5, "usd"))


def usd(name: str, merchant: str | None = None) -> AccountRef:
    return AccountRef(name, "usd", merchant)


def test_posting_refuses_debits_that_differ_from_credits() -> None:
    with pytest.raises(InvalidPosting, match="does not balance"):
        Posting(
            "capture",
            "ch_1",
            "acct_1",
            (
                debit(usd("psp_receivable"), Money(100, "usd")),
                credit(usd("merchant_payable", "acct_1"), Money(99, "usd")),
            ),
        )


def test_posting_balances_per_currency_not_in_total() -> None:
    with pytest.raises(InvalidPosting, match="does not balance"):
        Posting(
            "capture",
            "ch_1",
            "acct_1",
            (
                debit(usd("psp_receivable"), Money(100, "usd")),
                credit(AccountRef("merchant_payable", "eur", "acct_1"), Money(100, "eur")),
            ),
        )
    two_currencies = Posting(
        "capture",
        "ch_2",
        "acct_1",
        (
            debit(usd("psp_receivable"), Money(100, "usd")),
            credit(usd("merchant_payable", "acct_1"), Money(100, "usd")),
            debit(AccountRef("psp_receivable", "eur"), Money(7, "eur")),
            credit(AccountRef("merchant_payable", "eur", "acct_1"), Money(7, "eur")),
        ),
    )
    assert two_currencies.currencies == {"usd", "eur"}


def test_posting_needs_two_entries() -> None:
    with pytest.raises(InvalidPosting, match="two entries"):
        Posting("capture", "ch_1", "acct_1", (debit(usd("psp_receivable"), Money(100, "usd")),))
    with pytest.raises(InvalidPosting, match="two entries"):
        Posting("capture", "ch_1", "acct_1", ())


def test_entries_must_be_positive_and_in_their_account_currency() -> None:
    with pytest.raises(InvalidPosting, match="positive"):
        Entry(usd("psp_receivable"), "debit", Money(0, "usd"))
    with pytest.raises(InvalidPosting, match="positive"):
        Entry(usd("psp_receivable"), "debit", Money(-10, "usd"))
    with pytest.raises(CurrencyMismatch):
        Entry(usd("psp_receivable"), "debit", Money(10, "eur"))
    with pytest.raises(InvalidPosting):
        Entry(usd("psp_receivable"), "sideways", Money(10, "usd"))  # type: ignore[arg-type]


signed = st.integers(min_value=-(10**12), max_value=10**12)


@given(signed, signed, currencies)
def test_a_settlement_moves_the_bank_by_the_net_and_the_receivable_by_the_gross(
    gross: int, fee: int, currency: str
) -> None:
    if gross == 0 and fee == 0:
        with pytest.raises(ValueError, match="non-zero"):
            settlement_posting("recon_1/1/usd", Money(0, currency), Money(0, currency))
        return
    posting = settlement_posting("recon_1/1/x", Money(gross, currency), Money(fee, currency))
    assert_balanced(posting)
    movement = defaultdict(int)  # debit-positive movement of each account
    for entry in posting.entries:
        movement[entry.account.name] += entry.amount.amount * (1 if entry.direction == "debit" else -1)
    assert movement["bank_cash"] == gross - fee
    assert movement["psp_fees"] == fee
    assert movement["psp_receivable"] == -gross


def test_accounts_follow_the_chart() -> None:
    with pytest.raises(InvalidPosting, match="unknown account"):
        AccountRef("petty_cash", "usd")
    with pytest.raises(InvalidPosting, match="house account"):
        AccountRef("platform_fees", "usd", "acct_1")
    with pytest.raises(InvalidPosting, match="needs a merchant"):
        AccountRef("merchant_payable", "usd")
    assert set(CHART) == {
        "psp_receivable",
        "bank_cash",
        "psp_fees",
        "platform_fees",
        "payouts_in_transit",
        "psp_authorized",
        "authorized_hold",
        "merchant_payable",
        "dispute_hold",
    }


def test_a_posting_only_touches_its_own_merchant() -> None:
    with pytest.raises(InvalidPosting, match="touches an account of merchant acct_2"):
        Posting(
            "capture",
            "ch_1",
            "acct_1",
            (
                debit(usd("psp_receivable"), Money(5, "usd")),
                credit(usd("merchant_payable", "acct_2"), Money(5, "usd")),
            ),
        )


def test_postings_are_frozen_and_survive_pickling() -> None:
    posting = capture_posting(
        "ch_1", "acct_1", Money(1000, "usd"), Money(29, "usd"), posting_date=date(2024, 5, 1)
    )
    assert pickle.loads(pickle.dumps(posting)) == posting
    with pytest.raises(AttributeError):
        posting.kind = "refund"  # type: ignore[misc]


def test_entries_given_as_a_list_become_a_tuple() -> None:
    posting = Posting(
        "capture",
        "ch_1",
        "acct_1",
        [
            debit(usd("psp_receivable"), Money(5, "usd")),
            credit(usd("merchant_payable", "acct_1"), Money(5, "usd")),
        ],  # type: ignore[arg-type]
    )
    assert isinstance(posting.entries, tuple)
    assert hash(posting) == hash(Posting("capture", "ch_1", "acct_1", posting.entries))


@given(
    st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT),
    bps,
    st.lists(st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT), min_size=1, max_size=8),
)
def test_partial_refunds_return_exactly_the_fee_once_the_charge_is_refunded(
    amount: int, fee_bps: int, cuts: list[int]
) -> None:
    fee = fee_for(Money(amount, "usd"), fee_bps)
    # split the charge into partial refunds of arbitrary sizes that add up to it
    parts, left = [], amount
    for cut in cuts:
        if left == 0:
            break
        part = min(left, cut)
        parts.append(part)
        left -= part
    if left:
        parts.append(left)
    returned, refunded = 0, 0
    for part in parts:
        share = refund_fee_share(fee, amount, refunded, part)
        assert 0 <= share.amount <= part
        returned += share.amount
        refunded += part
        assert returned <= fee.amount
        assert returned == fee.amount * refunded // amount
    assert returned == fee.amount


def test_refund_fee_share_refuses_an_over_refund() -> None:
    with pytest.raises(ValueError):
        refund_fee_share(Money(29, "usd"), 1000, 600, 401)
    with pytest.raises(ValueError):
        refund_fee_share(Money(29, "usd"), 1000, 0, 0)


@given(st.integers(min_value=1, max_value=MAX_CHARGE_AMOUNT), currencies, bps)
def test_a_refund_reversal_undoes_its_refund(amount: int, currency: str, fee_bps: int) -> None:
    money = Money(amount, currency)
    fee = fee_for(money, fee_bps)
    refund = refund_posting("re_1", "acct_1", money, fee)
    reversal = refund_reversal_posting("re_1", "acct_1", money, fee)
    assert_balanced(reversal)
    assert reversal.kind == "refund_reversal" and reversal.external_ref == "re_1"
    net: defaultdict[tuple[str, str | None], int] = defaultdict(int)
    for posting in (refund, reversal):
        for entry in posting.entries:
            sign = 1 if entry.direction == "debit" else -1
            net[(entry.account.name, entry.account.merchant_id)] += sign * entry.amount.amount
    assert all(n == 0 for n in net.values())
