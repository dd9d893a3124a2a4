"""The simulator with two PSPs: routing by ``payray.routing``'s router and breakers, failover only after a
definite failure, late successes found and given back, and the cross-PSP invariant that one payment moves
money once whichever PSPs it went to."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ledger.postings import CAPTURE
from payray.routing import Breaker, Router
from sim.invariants import across_psps, psp_net
from sim.run import Simulation, simulate
from sim.scenarios import SCENARIOS, SWAPS
from sim.swarm import swarm_config
from sim.world import DEFINITE

ROUTING = ("stripe_outage_failover", "timeout_after_capture_failover", "late_success")
OUTAGE = SCENARIOS["stripe_outage_failover"]


def _run(name: str, seed: int, charges: int = 1_000) -> Simulation:
    simulation = Simulation(SCENARIOS[name].config(seed, charges), name)
    result = simulation.run()
    assert result.ok, (name, seed, result.violations[:3], result.first_history)
    assert sum(result.summary["answers"].values()) == charges
    return simulation


def _held_across_psps(simulation: Simulation) -> Counter[str]:
    """How many PSPs hold a net capture of each payment."""
    return Counter(payment for psp in simulation.psps.values() for payment in psp_net(psp))


@pytest.mark.parametrize("name", ROUTING)
def test_each_routing_scenario_keeps_every_invariant(name: str) -> None:
    for seed in (1, 2, 3):
        simulation = _run(name, seed)
        assert max(_held_across_psps(simulation).values()) == 1
        assert simulation.psps["braintree"].captures, "the second PSP took payments"


def test_a_stripe_outage_fails_over_and_99_percent_of_the_charges_not_declined_succeed() -> None:
    """Stripe refuses connections from 2 s to 8 s: each refused payment cascades to Braintree, Stripe's
    breaker opens within a few payments, new payments then go straight to Braintree, and none fails."""
    start, end = OUTAGE.config().psp.unreachable[0]
    for seed in (1, 2, 3):
        simulation = _run("stripe_outage_failover", seed, 2_000)
        service = simulation.service
        answers = Counter(p.state.value for p in service.payments.values())
        not_declined = sum(answers.values()) - answers["declined"]
        assert answers["succeeded"] >= 0.99 * not_declined and not answers["failed"], answers
        assert set(service.cascades) == {"not_sent"}
        opened = [at for at, psp, state in service.breaker_log if psp == "stripe" and state == "open"]
        assert opened and start <= opened[0] < start + 1.0, opened
        direct = service.routed[("braintree", "direct")]
        assert any(opened[0] <= at < end for at in direct)
        stripe = simulation.psps["stripe"]
        assert not [c for c in stripe.captures if start <= c.at < end]  # nothing reached Stripe meanwhile


def test_the_outage_run_reports_its_failover() -> None:
    result = simulate(OUTAGE.config(1), OUTAGE.name)
    routing = result.summary["routing"]
    assert result.ok and routing["success_rate"] >= 0.99
    failover = routing["failover"]
    assert 0 <= failover["to_second_psp_s"] <= failover["to_breaker_open_s"] < 1.0
    assert 0 <= failover["open_to_direct_s"] < 1.0
    assert routing["breaker_opened"]["stripe"] >= 1 and routing["captures"]["braintree"] > 500
    assert set(routing["cascades"]) == {"not_sent"}


def test_timeouts_after_capture_are_resolved_at_stripe_before_any_cascade() -> None:
    """Replies lost after Stripe captured, with failover on: each payment whose attempt ended unknown stays
    at Stripe (same key, or recovery's lookup there) unless that lookup found nothing there; only refused
    connections fail over straight away; no payment is captured twice."""
    resolved = cascaded = 0
    for seed in (1, 2, 3):
        simulation = _run("timeout_after_capture_failover", seed, 1_500)
        stripe = simulation.psps["stripe"]
        for payment in simulation.service.payments.values():
            psps = [psp for psp, _ in payment.ends]
            for i, (psp, end) in enumerate(payment.ends):
                if end == "unknown" and (set(psps[i:]) != {psp} or payment.psp != psp):
                    # it left only because recovery's search there found nothing: nothing stayed captured
                    held = [c for c in simulation.psps[psp].captures if c.order_id == payment.order_id]
                    assert all(c.refunded for c in held), payment.ends
                if i and psps[i] != psps[i - 1]:
                    assert payment.ends[i - 1][1] in {*DEFINITE, "unknown"}, payment.ends
                    cascaded += 1
            if (
                ("stripe", "unknown") in payment.ends
                and payment.state.value == "succeeded"
                and payment.psp == "stripe"
            ):
                assert payment.id in stripe.by_payment
                resolved += 1
        assert set(simulation.service.cascades) <= {*DEFINITE, "not_found"}
        assert max(_held_across_psps(simulation).values()) == 1
        orders = Counter(c.order_id for p in simulation.psps.values() for c in p.captures if not c.refunded)
        assert max(orders.values()) == 1  # zero double charges
    assert resolved > 100 and cascaded > 10


def test_late_successes_are_found_refunded_at_their_psp_and_booked_both_ways() -> None:
    """Stripe answers some captures with a refusal and makes them anyway: the payment went on to Braintree,
    and each late capture at Stripe is found (by webhook, or by the janitor's lookup when the webhook was
    dropped), refunded there, and booked as a capture and its reversal under the attempt's key."""
    found_by: Counter[str] = Counter()
    for seed in (1, 2, 3):
        simulation = _run("late_success", seed, 1_500)
        stripe, braintree = simulation.psps["stripe"], simulation.psps["braintree"]
        transactions = simulation.db.ledger.transactions
        late = [left for left in simulation.service.left.values() if left.state == "reversed"]
        assert stripe.late > 20 and len(late) == stripe.late
        reversals = {ref: effect for (_, ref), (_, effect) in transactions.items()}
        for left in late:
            payment = left.charge
            assert left.psp == "stripe"
            assert all(stripe.captures[i].refunded for i in stripe.by_payment[payment.id])
            capture, reversal = transactions[(CAPTURE, left.id)][1], reversals[f"compensation-{left.id}"]
            assert capture.receivable == payment.amount == -reversal.receivable
            if payment.state.value == "succeeded":
                assert payment.psp == "braintree" and payment.id in braintree.by_payment
            found_by[left.found_by] += 1
    assert found_by["webhook"] > 0 and found_by["janitor"] > 0, found_by


def test_swarm_worlds_with_two_psps_keep_the_cross_psp_invariant() -> None:
    """Thirty swarm worlds that route to both PSPs, with outages, refused connections and late successes
    drawn per seed: every invariant holds, the cross-PSP one included."""
    worlds: Counter[str] = Counter()
    seed = 0
    while worlds["two_psps"] < 30:
        seed += 1
        config = swarm_config(seed, 300)
        if len(config.routing.priorities) < 2:
            continue
        worlds["two_psps"] += 1
        result = simulate(config, "swarm")
        assert result.ok, (seed, result.violations[:3], result.first_history)
        routing = result.summary["routing"]
        worlds["cascaded"] += bool(routing["cascades"])
        worlds["late"] += sum(routing["late_captures"].values()) > 0
        worlds["braintree_first"] += config.routing.priorities[0] == "braintree"
    assert worlds["cascaded"] >= 5 and worlds["late"] >= 5 and worlds["braintree_first"] >= 5, worlds


def test_the_cross_psp_check_catches_a_doubled_capture() -> None:
    amounts = {"py_1": 500, "py_2": 700}.__getitem__
    assert across_psps({"stripe": {"py_1": 500}, "braintree": {"py_2": 700}}, amounts) == []
    doubled = across_psps({"stripe": {"py_1": 500}, "braintree": {"py_1": 500}}, amounts)
    assert [(v.invariant, v.charge) for v in doubled] == [("one_capture_across_psps", "py_1")]
    assert "braintree 500, stripe 500" in doubled[0].detail
    twice_at_one = across_psps({"stripe": {"py_2": 1_400}}, amounts)
    assert [v.charge for v in twice_at_one] == ["py_2"]


def test_a_capture_added_at_the_second_psp_is_caught_in_a_finished_run() -> None:
    """A clean run, then one payment Stripe captured also captured at Braintree: the checker names it."""
    simulation = Simulation(SCENARIOS["late_success"].config(1, 300), "late_success")
    assert simulation.run().ok
    stripe, braintree = simulation.psps["stripe"], simulation.psps["braintree"]
    payment_id = next(p for p in stripe.by_payment if p not in braintree.by_payment and p in psp_net(stripe))
    payment = simulation.service.payments[payment_id]
    braintree._record(payment_id, payment.order_id, payment.amount, "doubled", by_hand=False)
    nets = {name: psp_net(psp) for name, psp in simulation.psps.items()}
    amounts = {p.id: p.amount for p in simulation.service.payments.values()}
    assert [v.charge for v in across_psps(nets, amounts.__getitem__)] == [payment_id]


@pytest.mark.parametrize("name", ["forget_left_attempts", "failover_after_resumed_attempt"])
def test_a_broken_design_breaks_the_cross_psp_invariant(name: str) -> None:
    """Forget the attempts a payment left, and Stripe's late captures stay beside Braintree's; trust a
    refused connection on a retried request, and a payment whose first call captured fails over anyway."""
    for seed in (1, 2):
        result = simulate(SWAPS[name].config(seed, 600), name)
        broken = [v for v in result.violations if v.invariant == "one_capture_across_psps"]
        assert broken and all("braintree" in v.detail and "stripe" in v.detail for v in broken), seed


def test_the_guard_that_makes_the_broken_design_safe_is_the_one_it_drops() -> None:
    """The swap's world with the full design: clean."""
    config = SWAPS["failover_after_resumed_attempt"].config(1, 600)
    full = config.with_(design={"resumed_failures_cascade": False, "watch_left_attempts": True})
    assert simulate(full).ok


def test_a_single_psp_run_never_touches_the_second_psp() -> None:
    """Braintree's faults do nothing while merchants route to Stripe alone: the run is the same, draw for
    draw."""
    config = SCENARIOS["psp_timeouts"].config(3, 400)
    plain = simulate(config).as_dict()
    noisy = simulate(config.with_(braintree={"error_rate": 0.5, "late_success_rate": 0.5})).as_dict()
    for run in (plain, noisy):
        del run["config"]
    assert plain == noisy
    assert plain["routing"]["captures"] == {"stripe": plain["psp"]["captures"]}


def test_the_same_seed_gives_the_same_bytes_with_two_psps() -> None:
    config = SCENARIOS["late_success"].config(seed=4, charges=400)
    assert simulate(config).to_json() == simulate(config).to_json()


def test_the_breakers_are_payray_routings_own_on_simpys_clock() -> None:
    simulation = Simulation(OUTAGE.config(1, 600), OUTAGE.name)
    simulation.run()
    router = simulation.service.router
    assert type(router) is Router and all(type(b) is Breaker for b in router.breakers.values())
    opened = [at for at, psp, state in simulation.service.breaker_log if psp == "stripe" and state == "open"]
    assert opened and opened[0] >= OUTAGE.config().psp.unreachable[0][0]  # simulated seconds


def test_payray_simulate_runs_a_routing_scenario(tmp_path: Path) -> None:
    out = tmp_path / "outage.json"
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", "stripe_outage_failover", "--charges", "1000",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "breakers opened stripe" in done.stdout
    result = json.loads(out.read_text())
    assert result["ok"] and result["violations"]["one_capture_across_psps"] == 0
    assert result["routing"]["captures"]["braintree"] > 0
