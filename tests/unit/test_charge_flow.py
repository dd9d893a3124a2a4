"""The charge flow, driven against in-memory fakes of its store, PSP and wallets: no Postgres, no Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

from psp.port import PspChargeResult
from serve_app.flows.charge import ChargeFlow, Reply
from tests.unit.flow_fakes import FakeCharges, FakePsp, FakeWallets, new_charge

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def flow(psp: FakePsp, wallets: FakeWallets | None = None) -> tuple[ChargeFlow, FakeCharges, FakeWallets]:
    store = FakeCharges()
    wallets = wallets or FakeWallets()
    wallets.payments = store
    return ChargeFlow(None, psp, wallets, store=store), store, wallets  # no pool: the store is fake


def status_of(reply: Reply) -> str:
    return str(json.loads(reply.body).get("status", "failed"))


def test_a_captured_charge_is_booked_with_its_posting_and_answered_200() -> None:
    psp = FakePsp()
    charges, store, wallets = flow(psp)
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 200 and status_of(reply) == "succeeded"
    assert store.rows[charge.id].state == "succeeded"
    assert store.events(charge.id) == ["psp_captured", "ledger_posted", "responded"]
    assert wallets.kinds() == [("capture", charge.id)]
    assert store.rows[charge.id].ledger_transaction_id == wallets.committed[("capture", charge.id)]
    assert store.writes[-1].topic == "charge.succeeded" and store.responses[charge.id][0] == 200
    assert psp.capture_keys == [charge.psp_idempotency_key]


def test_a_declined_charge_is_answered_402_and_nothing_is_posted() -> None:
    charges, store, wallets = flow(FakePsp(capture_answers=["declined"]))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 402
    assert json.loads(reply.body)["error"]["decline_code"] == "card_declined"
    assert store.rows[charge.id].state == "declined" and store.events(charge.id) == ["psp_declined"]
    assert store.writes[-1].topic == "charge.failed" and store.responses[charge.id][0] == 402
    assert wallets.kinds() == []


def test_an_unknown_outcome_answers_pending_and_a_retry_captures_under_the_same_key() -> None:
    psp = FakePsp(capture_answers=["unknown"])
    charges, store, wallets = flow(psp)
    charge = store.add(new_charge())
    pending = run(charges.start(charge))
    assert pending.status == 202 and store.rows[charge.id].state == "unknown"
    assert store.responses[charge.id][0] == 202
    retried = run(charges.resume(store.rows[charge.id]))
    assert retried.status == 200 and store.rows[charge.id].state == "succeeded"
    retry = ["psp_retry", "psp_captured", "ledger_posted", "responded"]
    assert store.events(charge.id) == ["psp_unknown", *retry]
    assert psp.capture_keys == [charge.psp_idempotency_key] * 2
    assert wallets.kinds() == [("capture", charge.id)]


def test_a_ledger_that_refuses_the_capture_has_it_refunded_at_the_psp_and_both_postings_booked() -> None:
    psp = FakePsp()
    charges, store, wallets = flow(psp, FakeWallets(refuse=1))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 402 and store.rows[charge.id].state == "failed"
    assert store.events(charge.id) == [
        "psp_captured",
        "ledger_failed",
        "psp_refunded",
        "compensation_posted",
    ]
    assert psp.refund_keys == [f"payray-compensate-{charge.id}"]
    assert wallets.kinds() == [("capture", charge.id), ("refund", f"compensation-{charge.id}")]
    assert store.rows[charge.id].failure_code == "processing_error"
    assert "error" in store.writes[0].detail


def test_a_compensation_the_psp_cannot_confirm_stays_for_recovery_to_retry_with_its_key() -> None:
    psp = FakePsp(refund_answers=["unknown"])
    charges, store, _ = flow(psp, FakeWallets(refuse=1))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 202 and store.rows[charge.id].state == "refund_pending"
    finished = run(charges.recover(store.rows[charge.id]))
    assert finished.status == 402 and store.rows[charge.id].state == "failed"
    assert psp.refund_keys == [f"payray-compensate-{charge.id}"] * 2


def test_recovery_books_a_capture_the_psp_found_without_capturing_again() -> None:
    psp = FakePsp(found={"ch_1": PspChargeResult("captured", "pi_found")})
    charges, store, wallets = flow(psp)
    charge = store.add(new_charge())
    reply = run(charges.recover(charge))
    assert reply.status == 200 and store.rows[charge.id].state == "succeeded"
    assert store.rows[charge.id].psp_reference == "pi_found"
    assert store.writes[-1].detail == {"source": "recovery"}
    assert psp.capture_keys == [] and wallets.kinds() == [("capture", charge.id)]


def test_recovery_records_a_decline_the_psp_found() -> None:
    found = PspChargeResult("declined", "pi_found", failure_code="expired_card", failure_message="Expired.")
    charges, store, wallets = flow(FakePsp(found={"ch_1": found}))
    charge = store.add(new_charge(state="unknown"))
    reply = run(charges.recover(charge))
    assert reply.status == 402 and store.rows[charge.id].state == "declined"
    assert store.rows[charge.id].failure_code == "expired_card"
    assert wallets.kinds() == []


def test_recovery_fails_a_payment_the_psp_never_saw_by_way_of_unknown() -> None:
    psp = FakePsp()
    charges, store, wallets = flow(psp)
    charge = store.add(new_charge())
    reply = run(charges.recover(charge))
    assert reply.status == 402 and store.rows[charge.id].state == "failed"
    assert store.events(charge.id) == ["psp_unknown", "psp_not_found"]
    assert all(w.detail == {"source": "recovery"} for w in store.writes)
    assert psp.capture_keys == [] and wallets.kinds() == []


def test_recovery_waits_while_the_psp_cannot_say_yet() -> None:
    charges, store, _ = flow(FakePsp(found={"ch_1": PspChargeResult("unknown")}))
    charge = store.add(new_charge())
    reply = run(charges.recover(charge))
    assert reply.status == 202 and store.rows[charge.id].state == "psp_pending" and store.writes == []


def test_a_payment_another_driver_moved_first_is_answered_with_its_state_now() -> None:
    charges, store, _ = flow(FakePsp(capture_answers=["declined"]))
    charge = store.add(new_charge())
    store.rows[charge.id] = charge.evolve(state="succeeded")  # a webhook's driver booked it meanwhile
    reply = run(charges.start(charge))
    assert reply.status == 200 and store.writes == []


def test_resuming_a_settled_payment_stores_its_answer_again() -> None:
    charges, store, _ = flow(FakePsp())
    charge = store.add(new_charge(state="declined"))
    reply = run(charges.resume(charge))
    assert reply.status == 402 and store.responses[charge.id] == (402, reply.body)
