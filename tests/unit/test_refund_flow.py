"""The refund flow, driven against in-memory fakes of its store, PSP and wallets: no Postgres, no Ray."""

from __future__ import annotations

import asyncio
import json

import pytest

from actors.wallet import InsufficientFunds
from serve_app.flows.refund import RefundFlow
from tests.unit.flow_fakes import FakePsp, FakeRefunds, FakeWallets, new_refund


def flow(psp: FakePsp, wallets: FakeWallets | None = None) -> tuple[RefundFlow, FakeRefunds, FakeWallets]:
    store = FakeRefunds()
    wallets = wallets or FakeWallets()
    return RefundFlow(None, psp, wallets, store=store), store, wallets  # no pool: the store is fake


def status_of(body: bytes) -> str:
    return str(json.loads(body)["status"])


def test_a_refund_debits_the_wallet_before_the_psp_refunds_it() -> None:
    psp = FakePsp()
    refunds, store, wallets = flow(psp)
    refund = store.add(new_refund())
    status, body = asyncio.run(refunds.start(refund))
    assert status == 200 and status_of(body) == "succeeded"
    assert store.events(refund.id) == ["funds_held", "psp_refunded"]
    assert wallets.kinds() == [("refund", refund.id)] and wallets.balance == 1_000_000 - (400 - 12)
    assert psp.refund_keys == [refund.psp_idempotency_key]
    assert store.rows[refund.id].psp_reference == "pre_1"
    assert store.writes[-1].topic == "refund.created" and store.writes[-1].response is not None


def test_a_refund_the_psp_refuses_gives_the_debit_back_with_a_reversal() -> None:
    refunds, store, wallets = flow(FakePsp(refund_answers=["failed"]))
    refund = store.add(new_refund())
    status, body = asyncio.run(refunds.start(refund))
    assert status == 200 and status_of(body) == "failed"
    assert store.events(refund.id) == ["funds_held", "psp_refused", "reversal_posted"]
    assert wallets.kinds() == [("refund", refund.id), ("refund_reversal", refund.id)]
    assert store.rows[refund.id].failure_reason == "refused by the bank"
    assert store.writes[-1].topic == "refund.failed"


def test_an_unknown_outcome_answers_pending_and_a_retry_asks_again_under_the_same_key() -> None:
    psp = FakePsp(refund_answers=["unknown"])
    refunds, store, wallets = flow(psp)
    refund = store.add(new_refund())
    status, body = asyncio.run(refunds.start(refund))
    assert status == 202 and status_of(body) == "pending" and store.rows[refund.id].state == "psp_unknown"
    status, _ = asyncio.run(refunds.resume(store.rows[refund.id]))
    assert status == 200 and store.rows[refund.id].state == "succeeded"
    assert store.events(refund.id) == ["funds_held", "psp_unknown", "psp_retry", "psp_refunded"]
    assert psp.refund_keys == [refund.psp_idempotency_key] * 2
    assert wallets.kinds() == [("refund", refund.id)]


def test_a_refund_the_balance_does_not_cover_is_discarded_before_anything_moved() -> None:
    psp = FakePsp()
    refunds, store, wallets = flow(psp, FakeWallets(balance=100))
    refund = store.add(new_refund())
    with pytest.raises(InsufficientFunds):
        asyncio.run(refunds.start(refund))
    assert store.discarded == [refund.id] and refund.id not in store.rows
    assert psp.refund_keys == [] and wallets.kinds() == []


def test_a_refund_made_at_the_psp_without_us_is_booked_whatever_the_balance() -> None:
    psp = FakePsp()
    refunds, store, wallets = flow(psp, FakeWallets(balance=0))
    refund = store.add(new_refund(state="booking"))
    status, body = asyncio.run(refunds.resume(refund))
    assert status == 200 and status_of(body) == "succeeded"
    assert store.events(refund.id) == ["refund_booked"] and wallets.kinds() == [("refund", refund.id)]
    assert psp.refund_keys == []


def test_a_reversal_the_ledger_refuses_leaves_the_refund_reversing_for_recovery() -> None:
    refunds, store, wallets = flow(FakePsp(), FakeWallets(refuse=1))
    refund = store.add(new_refund(state="reversing"))
    status, _ = asyncio.run(refunds.resume(refund))
    assert status == 202 and store.rows[refund.id].state == "reversing" and store.writes == []
    status, _ = asyncio.run(refunds.resume(store.rows[refund.id]))
    assert status == 200 and store.rows[refund.id].state == "failed"
    assert wallets.kinds() == [("refund_reversal", refund.id)]
