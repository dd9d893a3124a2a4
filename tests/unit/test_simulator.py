"""The simulator: deterministic by seed, every scenario clean with the full design, every swap broken, and
driven by ``payray.charge``'s own transition table."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from payray import charge, refund
from sim.config import SimConfig
from sim.run import Simulation, simulate
from sim.scenarios import SCENARIOS, SWAPS
from sim.service import MachineRefused
from sim.swarm import swarm_config

CHARGES = 400
#: Transitions the service itself never takes: a PSP refund whose outcome is unknown leaves the payment in
#: refund_pending (recovery refunds again with the same key) rather than re-entering it.
NOT_TAKEN_BY_THE_SERVICE = {(charge.ChargeState.REFUND_PENDING, charge.ChargeEvent.PSP_REFUND_UNKNOWN)}
#: The service never takes a refusal straight from psp_unknown: it asks the PSP again, same key, and hears the
#: refusal in funds_held.
NOT_TAKEN_BY_THE_REFUND_FLOW = {(refund.RefundState.PSP_UNKNOWN, refund.RefundEvent.PSP_REFUSED)}


def test_the_same_seed_and_config_give_the_same_bytes() -> None:
    config = SCENARIOS["webhook_chaos"].config(seed=7, charges=CHARGES)
    first, second = simulate(config).to_json(), simulate(config).to_json()
    assert first == second
    assert simulate(config.with_(seed=8)).to_json() != first


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_keeps_every_invariant_over_20_seeds(name: str) -> None:
    for seed in range(1, 21):
        result = simulate(SCENARIOS[name].config(seed, CHARGES), name)
        assert result.ok, (seed, result.violations[:3], result.first_history)
        assert sum(result.summary["answers"].values()) == CHARGES


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_every_swap_shows_the_violation_it_is_meant_to_show(name: str) -> None:
    swap = SWAPS[name]
    for seed in (1, 2, 3):
        result = simulate(swap.config(seed, CHARGES), name)
        broken = {v.invariant for v in result.violations}
        assert swap.breaks in broken, (seed, broken)


def test_the_simulator_exercises_every_transition_of_both_machines() -> None:
    """A transition added to ``payray.charge`` or ``payray.refund`` fails this until the simulator drives it
    too. The named scenarios plus one run where every fault is frequent reach every transition the service
    takes."""
    storm = SimConfig(seed=1).with_(
        load={"charges": CHARGES, "refund_share": 0.5},
        psp={
            "decline_rate": 0.3,
            "lost_reply_rate": 0.5,
            "error_rate": 0.5,
            "refund_refusal_rate": 0.2,
            "external_refund_rate": 0.1,
        },
        client={"abandon_rate": 0.5},
        service={"ledger_failure_rate": 0.1, "crash_after_capture_rate": 0.05},
    )
    configs = [(name, s.config(1, CHARGES)) for name, s in {**SCENARIOS, **SWAPS}.items()]
    charges: set[tuple[object, object]] = set()
    refunds: set[tuple[object, object]] = set()
    for name, config in [*configs, ("storm", storm)]:
        simulation = Simulation(config, name)
        simulation.run()
        for payment in simulation.service.payments.values():
            charges |= {(t.source, t.event) for _, _, t in payment.history}
        for r in simulation.refunds.refunds.values():
            refunds |= {(t.source, t.event) for _, _, t in r.history}
    assert set(charge.TRANSITIONS) - NOT_TAKEN_BY_THE_SERVICE <= charges <= set(charge.TRANSITIONS)
    assert set(refund.TRANSITIONS) - NOT_TAKEN_BY_THE_REFUND_FLOW <= refunds <= set(refund.TRANSITIONS)


def test_the_simulator_asks_payray_charge_for_every_transition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take a transition out of the production table and the simulated service can no longer capture."""
    monkeypatch.delitem(charge.TRANSITIONS, (charge.ChargeState.PSP_PENDING, charge.ChargeEvent.PSP_CAPTURED))
    with pytest.raises(MachineRefused, match="psp_captured"):
        simulate(SCENARIOS["happy_path"].config(1, 20))


@pytest.mark.parametrize("name", sorted({**SCENARIOS, **SWAPS}))
def test_a_run_leaves_no_garbage_cycles(name: str) -> None:
    """A run switches the cyclic collector off (``payray.gc_pause``). That is safe only while a run makes no
    reference cycles, which would pile up uncollected over a million charges; and the collector must be back
    on after it."""
    gc.collect()
    simulation = Simulation({**SCENARIOS, **SWAPS}[name].config(1, CHARGES), name)
    simulation.run()  # the world itself stays alive until here, so only the run's own garbage can count
    assert gc.isenabled()
    assert gc.collect() == 0


def test_a_client_that_hangs_up_cancels_its_request_and_the_psp_keeps_what_it_did() -> None:
    """Ray Serve cancels a request whose client disconnected at its next await; the simulated client's
    timeout does the same, mid-PSP-call included: the PSP captures anyway, nobody hears it, and recovery
    finds it. The invariants still hold."""
    config = (
        SCENARIOS["happy_path"]
        .config(3, CHARGES)
        .with_(client={"timeout_s": 0.03, "max_retries": 0}, psp={"latency_s": 0.05, "latency_sigma": 0.0})
    )
    simulation = Simulation(config, "hang_ups")
    result = simulation.run()
    assert result.ok, result.violations[:3]
    assert result.summary["answers"]["gave_up"] == CHARGES  # every client hung up before any answer
    finished_by = {who for p in simulation.service.payments.values() for _, who, _ in p.history[1:]}
    assert finished_by <= {"janitor", "webhook"}  # the cancelled requests moved nothing past the insert
    assert result.summary["psp"]["captures"] > 0.8 * CHARGES


@pytest.mark.parametrize("by_hand", [0.0, 0.3], ids=["refunds", "refunds_and_dashboard_refunds"])
def test_a_request_cut_anywhere_leaves_the_books_right(by_hand: float) -> None:
    """Clients hang up at every point of a charge's and a refund's request (timeouts swept across their
    length), with one merchant per order so no wallet covers a refund twice, every charge refunded, half the
    refunds refused, and optionally refunds made at the PSP by hand. Found in a 1,000-seed swarm: a refund
    retried after its wallet debit must be answered with that debit, not discarded as uncovered; a refund
    cut after its reversal was posted must give its reservation back once."""
    for timeout in (0.005, 0.006, 0.007, 0.008, 0.01, 0.012, 0.015, 0.02, 0.03, 0.04):
        for seed in (1, 2):
            config = (
                SCENARIOS["happy_path"]
                .config(seed, 300)
                .with_(
                    load={"refund_share": 1.0, "refund_after_s": 0.2, "merchants": 300},
                    client={"timeout_s": timeout, "max_retries": 8, "backoff_s": 0.01},
                    psp={"refund_refusal_rate": 0.5, "latency_s": 0.01, "external_refund_rate": by_hand},
                )
            )
            result = simulate(config, "cut_anywhere")
            assert result.ok, (timeout, seed, result.violations[:3])


def test_a_replica_that_dies_cuts_what_it_serves_and_the_books_stay_right() -> None:
    """One replica, down from 1 s to 3 s: what it served is cut (a 502), what comes meanwhile is refused (a
    503); clients retry with the same key and recovery finishes the rest."""
    config = (
        SCENARIOS["psp_timeouts"]
        .config(4, CHARGES)
        .with_(service={"replicas": 1, "replica_crashes": (1.0,), "replica_restart_s": 2.0})
    )
    result = simulate(config, "one_replica_dies")
    assert result.ok, result.violations[:3]
    faults = result.summary["replicas"]
    assert faults["crashes"] == 1 and faults["requests_cut"] > 0 and faults["refused_none_up"] > 0
    assert result.summary["retries"] >= faults["requests_cut"]


def test_replicas_are_capacity_under_a_spike() -> None:
    """Each replica does one request's CPU work at a time: under Black Friday's spike one replica queues
    far more than four, and its orders wait longer."""
    runs = {
        replicas: simulate(
            SCENARIOS["black_friday"].config(1, 1_500).with_(service={"replicas": replicas}), "black_friday"
        )
        for replicas in (1, 4)
    }
    assert all(run.ok for run in runs.values())
    deepest = {n: max(run.as_dict()["timeline"]["replica_queue"]) for n, run in runs.items()}
    assert deepest[1] > 5 * max(deepest[4], 1)
    assert runs[1].summary["latency_s"]["p95"] > runs[4].summary["latency_s"]["p95"]


def _payray(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", *args], capture_output=True, text=True, timeout=300
    )


def test_payray_simulate_writes_json_and_exits_by_the_invariants(tmp_path: Path) -> None:
    out = tmp_path / "happy.json"
    done = _payray("happy_path", "--seed", "5", "--charges", "200", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["ok"] and result["seed"] == 5 and result["charges"] == 200
    assert set(result["violations"]) >= {
        "no_double_capture",
        "psp_matches_ledger",
        "no_pending_after_recovery",
    }

    broken = _payray("no_compensation", "--seed", "2", "--charges", "500")
    assert broken.returncode == 1
    assert "seed 2" in broken.stdout and "--ledger_failed-->" in broken.stdout
    assert "payray simulate no_compensation --seed 2" in broken.stdout


@pytest.mark.parametrize(
    "args", [["nonsense"], ["happy_path", "--charges", "0"], ["happy_path", "--seed", "x"]]
)
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    done = _payray(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


def test_swarm_seeds_draw_different_worlds_and_the_full_design_survives_them() -> None:
    worlds = {swarm_config(seed).as_dict()["psp"]["error_rate"] for seed in range(1, 31)}
    assert len(worlds) > 5
    assert swarm_config(7) == swarm_config(7)
    for seed in range(1, 31):
        result = simulate(swarm_config(seed, 300), "swarm")
        assert result.ok, (seed, result.violations[:3])


def test_swarm_finds_a_broken_design() -> None:
    broken = [
        seed
        for seed in range(1, 31)
        if not simulate(swarm_config(seed, 300).with_(design={"psp_idempotency_key": False}), "swarm").ok
    ]
    assert len(broken) >= 10


def test_payray_simulate_swarm_names_a_failing_seed(tmp_path: Path) -> None:
    out = tmp_path / "swarm.json"
    done = _payray("swarm", "--seeds", "5", "--charges", "200", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["seed"] for row in json.loads(out.read_text())] == [1, 2, 3, 4, 5]
