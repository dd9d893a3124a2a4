"""The simulator's authorizations: manual captures, in full or in part, cancels and the 7-day expiry, driven
by ``payray.charge``'s own rules under faults, with the PSP's authorizations and the ledger's holds agreeing
at the end of every run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import simpy

from ledger.postings import AUTHORIZATION, AUTHORIZATION_RELEASE, CAPTURE, fee_for
from payray import charge, intent
from payray.charge import AUTHORIZATION_DAYS, ChargeEvent, ChargeState
from payray.money import Money
from sim import world
from sim.config import AUTHORIZATION_S
from sim.run import Simulation, simulate
from sim.scenarios import SCENARIOS
from sim.service import MachineRefused
from sim.swarm import swarm_config
from sim.world import FEE_BPS

CHARGES = 400
MANUAL = SCENARIOS["manual_capture"]
E, S = ChargeEvent, ChargeState


def test_an_authorization_lives_seven_days() -> None:
    assert AUTHORIZATION_DAYS == 7 and AUTHORIZATION_S == 7 * 24 * 3600


def test_the_manual_capture_scenario_keeps_every_invariant_over_30_seeds() -> None:
    moves: Counter[str] = Counter()
    for seed in range(1, 31):
        result = simulate(MANUAL.config(seed, CHARGES), MANUAL.name)
        assert result.ok, (seed, result.violations[:3], result.first_history)
        assert sum(result.summary["answers"].values()) == CHARGES
        authorizations = result.summary["authorizations"]
        moves.update(authorizations["merchants"])
        moves.update({f"psp:{status}": n for status, n in authorizations["at_psp"].items()})
        moves["partial"] += authorizations["partial_captures"]
        moves["expired_by_janitor"] += authorizations["expired_by_janitor"]
    for seen in (
        "capture:succeeded",
        "partial_capture:succeeded",
        "cancel:canceled",
        "late_capture:succeeded",
        "late_capture:canceled",
        "psp:captured",
        "psp:canceled",
        "psp:expired",
    ):
        assert moves[seen] > 0, (seen, moves)
    assert moves["partial"] > 100 and moves["expired_by_janitor"] > 100


def test_the_same_seed_gives_the_same_bytes_with_authorizations() -> None:
    config = MANUAL.config(seed=5, charges=CHARGES)
    assert simulate(config).to_json() == simulate(config).to_json()


def _run(seed: int) -> Simulation:
    simulation = Simulation(MANUAL.config(seed, CHARGES), MANUAL.name)
    result = simulation.run()
    assert result.ok, (seed, result.violations[:3], result.first_history)
    return simulation


def test_partial_captures_add_up() -> None:
    """Each captured authorization: the PSP captured what the merchant asked and let the rest go; its capture
    posting books that much (the merchant credited it less the fee) and releases the whole hold; what the
    holds booked is what was captured, released with the captures, or released by cancels and expiries."""
    partial = 0
    for seed in (1, 2, 3):
        simulation = _run(seed)
        psp, transactions = simulation.psp, simulation.db.ledger.transactions
        held = captured = let_go = released = 0
        for payment_id, (auth, *more) in psp.authorizations.items():
            assert not more  # the PSP's keys: one authorization per charge
            payment = simulation.service.payments[payment_id]
            held += transactions[(AUTHORIZATION, payment_id)][1].hold
            if auth.status == "captured":
                _, effect = transactions[(CAPTURE, payment_id)]
                assert auth.captured == payment.captured == effect.receivable <= auth.amount
                assert effect.hold == -auth.amount and effect.authorized == -auth.amount
                fee = fee_for(Money(auth.captured, "usd"), FEE_BPS).amount
                assert effect.payable == auth.captured - fee
                partial += auth.captured < auth.amount
                captured += auth.captured
                let_go += auth.amount - auth.captured
            elif (AUTHORIZATION_RELEASE, payment_id) in transactions:
                released += -transactions[(AUTHORIZATION_RELEASE, payment_id)][1].hold
        assert held == captured + let_go + released
    assert partial > 50


def test_the_janitor_expires_an_authorization_after_seven_days_and_not_before() -> None:
    """Authorizations the merchant leaves alone are canceled by the janitor within one sweep after seven
    days; one captured a little before then is captured, one a little after is not (the PSP let it go, or the
    janitor did first)."""
    sweep_s = MANUAL.config().recovery.authorization_sweep_s
    late: Counter[str] = Counter()
    for seed in (1, 2, 3, 4):
        simulation = _run(seed)
        expired = 0
        for payment in simulation.service.payments.values():
            for at, who, t in payment.history:
                if t.event is E.CANCEL and who == "expiry":
                    expired += 1
                    assert AUTHORIZATION_S <= at - payment.authorized_at <= AUTHORIZATION_S + sweep_s
                if t.event is E.CAPTURE:
                    age = at - payment.authorized_at
                    late["before" if age < AUTHORIZATION_S else "after"] += 1
                    assert age < AUTHORIZATION_S + sweep_s  # by then the janitor had canceled it
                    if age > AUTHORIZATION_S - sweep_s:  # a late capture: its outcome follows the expiry
                        auth = simulation.psp.authorizations[payment.id][0]
                        outcome = "captured" if at < auth.at + AUTHORIZATION_S else "gone"
                        late[outcome] += 1
                        assert payment.state is (S.SUCCEEDED if outcome == "captured" else S.CANCELED)
        assert expired == simulation.service.expired > 10
        for auths in simulation.psp.authorizations.values():  # nothing left holding a card at the end
            assert all(a.status != "authorized" for a in auths)
    assert late["captured"] > 0 and late["gone"] > 0


def test_a_capture_posting_that_keeps_the_hold_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the ledger's rule so a capture books the captured part but does not release the hold: the
    ledger then holds what the PSP no longer does."""
    capture_posting = world.capture_posting

    def keeps_the_hold(*args: object, authorized: Money | None = None, **kwargs: object) -> object:
        return capture_posting(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(world, "capture_posting", keeps_the_hold)
    world.capture_booked.cache_clear()
    try:
        result = simulate(MANUAL.config(1, CHARGES), MANUAL.name)
    finally:
        world.capture_booked.cache_clear()
    details = [v.detail for v in result.violations if v.invariant == "psp_matches_ledger"]
    assert any("with a hold of" in d for d in details) and any("psp_authorized" in d for d in details)


def test_authorizations_nobody_expires_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the janitor's expiry, authorizations the merchant left alone rest for ever: past seven days the
    PSP no longer holds them while the ledger still does."""

    def no_expiry(_simulation: Simulation) -> Generator[simpy.Event, Any, None]:
        yield from ()

    monkeypatch.setattr(Simulation, "_expiry", no_expiry)
    result = simulate(MANUAL.config(1, CHARGES), MANUAL.name)
    broken = Counter(v.invariant for v in result.violations)
    assert broken["no_pending_after_recovery"] > 10 and broken["psp_matches_ledger"] > 10, broken
    assert "after its hold" in next(
        v.detail for v in result.violations if v.invariant.startswith("no_pending")
    )


def test_the_simulator_asks_payray_charge_for_the_capture_of_an_authorization(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(charge.TRANSITIONS, (S.CAPTURE_PENDING, E.PSP_CANCELED))
    with pytest.raises(MachineRefused, match="psp_canceled"):
        simulate(MANUAL.config(1, CHARGES), MANUAL.name)


def test_swarm_worlds_with_manual_captures_are_clean() -> None:
    manual = 0
    for seed in range(1, 41):
        config = swarm_config(seed, 300)
        if not config.load.manual_share:
            continue
        manual += 1
        result = simulate(config, "swarm")
        assert result.ok, (seed, result.violations[:3], result.first_history)
    assert manual >= 10


def test_payray_simulate_manual_capture(tmp_path: Path) -> None:
    out = tmp_path / "manual.json"
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", "manual_capture", "--seed", "3", "--charges", "300",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["ok"] and result["scenario"] == "manual_capture"
    assert result["authorizations"]["at_psp"]["captured"] > 0
    assert result["sim_time_s"] > AUTHORIZATION_S  # the run waited the authorizations out


def test_every_manual_order_is_an_intent_that_ends_where_its_charge_does() -> None:
    simulation = _run(seed=3)
    intents = Counter(c.intent.value for c in simulation.service.payments.values() if c.intent is not None)
    manual = sum(c.manual for c in simulation.service.payments.values())
    assert sum(intents.values()) == manual > 0
    for status in ("succeeded", "canceled", "requires_payment_method"):  # captured, released, declined
        assert intents[status] > 0, intents
    assert intents["processing"] == 0  # the quiet phase settles every charge, and so every intent


def test_an_intent_that_does_not_follow_its_charge_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the rule so an intent never hears of its capture: the intents of captured charges then say
    ``processing`` while their charges succeeded."""
    follow = intent.follow

    def deaf_to_captures(state: str, charge_state: str) -> object:
        return None if charge_state == S.SUCCEEDED else follow(state, charge_state)

    monkeypatch.setattr(intent, "follow", deaf_to_captures)
    result = simulate(MANUAL.config(1, CHARGES), MANUAL.name)
    details = [v.detail for v in result.violations if v.invariant == "intents_follow_charges"]
    assert details and all(d.endswith("while its charge is succeeded") for d in details)
