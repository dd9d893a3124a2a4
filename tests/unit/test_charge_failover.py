"""Failover between PSPs in the charge flow, against in-memory fakes: which failures go on to the next PSP,
which never do, and where everything about a payment goes afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import pytest

from payray.charge import attempt_key
from payray.money import Money
from serve_app.flows.charge import ChargeFlow, Reply
from serve_app.flows.psp_routes import PspRoutes
from serve_app.flows.refund import RefundFlow
from tests.unit.flow_fakes import FakeCharges, FakePsp, FakeRefunds, FakeWallets, new_charge, new_refund

T = TypeVar("T")
BOTH = ("stripe", "braintree")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def routes(
    stripe: FakePsp, braintree: FakePsp, order: Sequence[str] = BOTH, clock: Clock | None = None
) -> PspRoutes:
    async def routings() -> Mapping[str, Sequence[str]]:
        return {"m_1": order}

    return PspRoutes({"stripe": stripe, "braintree": braintree}, routings, clock=clock or Clock())


def flow(psps: PspRoutes) -> tuple[ChargeFlow, FakeCharges, FakeWallets]:
    store = FakeCharges()
    wallets = FakeWallets()
    wallets.payments = store
    return ChargeFlow(None, psps, wallets, store=store), store, wallets  # no pool: the store is fake


def status_of(reply: Reply) -> str:
    return str(json.loads(reply.body).get("status", "failed"))


@pytest.mark.parametrize("first_answer", ["not_sent", "refused", "declined:processing_error"])
def test_a_definite_failure_fails_over_to_the_next_psp_under_a_key_of_its_own(first_answer: str) -> None:
    stripe, braintree = FakePsp(capture_answers=[first_answer]), FakePsp(prefix="bt")
    charges, store, wallets = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 200 and status_of(reply) == "succeeded"
    done = store.rows[charge.id]
    assert (done.psp, done.psp_reference) == ("braintree", f"bt_{charge.id}")
    assert stripe.capture_keys == [charge.psp_idempotency_key]
    assert braintree.capture_keys == [attempt_key(charge.id, "braintree")] == [done.psp_idempotency_key]
    assert store.events(charge.id) == ["psp_failed_over", "psp_captured", "ledger_posted", "responded"]
    (ended,) = store.ended
    assert (ended.psp, ended.idempotency_key, ended.ended) == (
        "stripe",
        charge.psp_idempotency_key,
        first_answer.split(":")[0],
    )
    assert wallets.kinds() == [("capture", charge.id)]  # one capture booked, at the PSP that made it


@pytest.mark.parametrize("first_answer", ["unknown", "declined:insufficient_funds", "declined:card_declined"])
def test_an_unknown_outcome_or_a_hard_decline_never_fails_over(first_answer: str) -> None:
    stripe, braintree = FakePsp(capture_answers=[first_answer]), FakePsp(prefix="bt")
    charges, store, wallets = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == (202 if first_answer == "unknown" else 402)
    assert braintree.capture_keys == [] and store.ended == [] and store.rows[charge.id].psp == "stripe"
    assert wallets.kinds() == []


def test_an_unknown_outcome_is_resolved_at_its_own_psp_under_the_same_key() -> None:
    stripe, braintree = FakePsp(capture_answers=["unknown"]), FakePsp(prefix="bt")
    charges, store, _ = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    run(charges.start(charge))
    reply = run(charges.resume(store.rows[charge.id]))
    assert reply.status == 200 and store.rows[charge.id].psp == "stripe"
    assert stripe.capture_keys == [charge.psp_idempotency_key] * 2 and braintree.capture_keys == []


def test_a_merchant_with_one_psp_keeps_todays_behaviour_when_it_cannot_be_reached() -> None:
    stripe, braintree = FakePsp(capture_answers=["not_sent"]), FakePsp(prefix="bt")
    charges, store, _ = flow(routes(stripe, braintree, order=("stripe",)))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 202 and store.rows[charge.id].state == "unknown"
    assert braintree.capture_keys == [] and store.ended == []


def test_a_definite_failure_at_the_last_psp_stands() -> None:
    stripe = FakePsp(capture_answers=["refused"])
    braintree = FakePsp(capture_answers=["declined:processing_error"], prefix="bt")
    charges, store, _ = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    reply = run(charges.start(charge))
    assert reply.status == 402 and store.rows[charge.id].failure_code == "processing_error"
    assert [a.psp for a in store.ended] == ["stripe"]  # never back to a PSP the payment tried


def test_the_breaker_routes_new_payments_away_and_a_probe_brings_them_back() -> None:
    clock = Clock()
    stripe, braintree = FakePsp(capture_answers=["not_sent"] * 5), FakePsp(prefix="bt")
    psps = routes(stripe, braintree, clock=clock)
    charges, store, _ = flow(psps)
    for n in range(5):
        charge = store.add(new_charge(f"ch_{n}"))
        assert run(charges.start(charge)).status == 200
    assert psps.health()["stripe"] == "open"
    assert run(psps.first("m_1", "usd")) == "braintree"  # while open, new payments skip Stripe
    clock.now += psps.router.breakers["stripe"].open_s
    assert run(psps.first("m_1", "usd")) == "stripe"  # the probe
    probe = store.add(new_charge("ch_probe").evolve(psp="stripe"))
    assert run(charges.start(probe)).status == 200 and store.rows[probe.id].psp == "stripe"
    assert psps.health()["stripe"] == "closed" and run(psps.first("m_1", "usd")) == "stripe"


def test_a_compensation_refunds_at_the_psp_that_captured() -> None:
    stripe, braintree = FakePsp(capture_answers=["not_sent"]), FakePsp(prefix="bt")
    store = FakeCharges()
    wallets = FakeWallets(refuse=1)
    wallets.payments = store
    charges = ChargeFlow(None, routes(stripe, braintree), wallets, store=store)
    charge = store.add(new_charge())
    assert run(charges.start(charge)).status == 402
    assert stripe.refund_keys == [] and braintree.refund_references == [f"bt_{charge.id}"]


def test_a_refund_goes_to_the_psp_its_charge_was_made_at() -> None:
    stripe, braintree = FakePsp(), FakePsp(prefix="bt")
    store = FakeRefunds(charge_psps={"ch_1": "braintree"})
    wallets = FakeWallets()
    refunds = RefundFlow(None, routes(stripe, braintree), wallets, store=store)
    refund = store.add(new_refund())
    assert run(refunds.start(refund))[0] == 200
    assert stripe.refund_keys == [] and braintree.refund_keys == [refund.psp_idempotency_key]


def test_routing_skips_psps_not_configured_and_reads_the_lists_again_after_their_ttl() -> None:
    clock, reads = Clock(), [0]

    async def routings() -> Mapping[str, Sequence[str]]:
        reads[0] += 1
        return {"m_1": ("braintree", "stripe")} if reads[0] == 1 else {"m_2": ("braintree",)}

    only_stripe = PspRoutes({"stripe": FakePsp()}, routings, clock=clock)
    assert (
        run(only_stripe.first("m_1", "usd")) == "stripe"
        and run(only_stripe.after("m_1", "stripe", "usd")) is None
    )
    both = PspRoutes({"stripe": FakePsp(), "braintree": FakePsp()}, routings, clock=clock)
    reads[0] = 0
    assert (
        run(both.first("m_1", "usd")) == "braintree" and run(both.first("m_9", "usd")) == "stripe"
    )  # no list: Stripe
    assert run(both.first("m_1", "usd")) == "braintree" and reads == [
        1
    ]  # read once within the TTL, for everyone
    clock.now += 5.0
    assert (
        run(both.first("m_1", "usd")) == "stripe"
        and run(both.first("m_2", "usd")) == "braintree"
        and reads == [2]
    )
    both.forget()
    run(both.first("m_1", "usd"))
    assert reads == [3]


def test_a_payment_at_a_psp_not_configured_is_a_setup_error_not_an_outcome() -> None:
    from psp.port import PspConfigurationError

    with pytest.raises(PspConfigurationError, match="braintree"):
        PspRoutes.only(FakePsp()).adapter("braintree")


def test_a_refused_connection_on_a_retried_attempt_never_fails_over() -> None:
    """The first call may have captured before its answer was lost: only that PSP can say (recovery)."""
    stripe, braintree = FakePsp(capture_answers=["unknown", "not_sent"]), FakePsp(prefix="bt")
    charges, store, _ = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    assert run(charges.start(charge)).status == 202
    assert run(charges.resume(store.rows[charge.id])).status == 202
    assert store.rows[charge.id].state == "unknown" and store.rows[charge.id].psp == "stripe"
    assert braintree.capture_keys == [] and store.ended == []


def test_a_psp_that_does_not_take_the_currency_is_skipped_and_its_breaker_left_alone() -> None:
    stripe, braintree = FakePsp(), FakePsp(prefix="bt", currencies=frozenset({"usd"}))
    psps = routes(stripe, braintree, order=("braintree", "stripe"))
    assert run(psps.first("m_1", "eur")) == "stripe" and run(psps.first("m_1", "usd")) == "braintree"
    assert run(psps.after("m_1", "braintree", "eur")) == "stripe"
    only = routes(stripe, braintree, order=("braintree",))
    assert run(only.first("m_1", "eur")) == "braintree"  # nowhere else: its refusal is the answer
    charges, store, _ = flow(only)
    for n in range(6):
        charge = store.add(new_charge(f"ch_eur_{n}").evolve(amount=Money(1000, "eur"), psp="braintree"))
        braintree.capture_answers.append("refused")
        assert run(charges.start(charge)).status == 402
    assert only.health()["braintree"] == "closed"  # a currency it does not take says nothing of its health


def test_recovery_that_finds_nothing_at_the_psp_goes_on_to_the_next_and_a_lone_psp_fails() -> None:
    stripe, braintree = FakePsp(capture_answers=["unknown"]), FakePsp(prefix="bt")
    charges, store, wallets = flow(routes(stripe, braintree))
    charge = store.add(new_charge())
    assert run(charges.start(charge)).status == 202
    recovered = run(charges.recover(store.rows[charge.id]))
    assert recovered.status == 200 and store.rows[charge.id].psp == "braintree"
    assert [(a.psp, a.ended) for a in store.ended] == [("stripe", "not_found")]
    assert store.events(charge.id)[:2] == ["psp_unknown", "psp_failed_over"]
    assert wallets.kinds() == [("capture", charge.id)]

    alone = FakePsp(capture_answers=["unknown"])
    charges, store, _ = flow(routes(alone, FakePsp(prefix="bt"), order=("stripe",)))
    charge = store.add(new_charge())
    run(charges.start(charge))
    assert run(charges.recover(store.rows[charge.id])).status == 402
    assert store.rows[charge.id].state == "failed" and store.ended == []
