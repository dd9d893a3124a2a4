"""The capacity model: a lone charge costs its path, cores and GILs cap the rate, batches grow with load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.capacity import Batch, Burst, Machine, run

PATH = (Burst("api", 0.002), Burst("psp", 0.001, wait_s=0.010), Burst("api", 0.001))


def test_a_lone_charge_costs_its_path() -> None:
    machine = Machine(cores=2, processes={"api": 1, "psp": 1}, path=PATH, variability=0)
    outcome = run(machine, clients=1, charges=200, warmup=10)
    assert outcome.p50_ms == pytest.approx(14.0) and outcome.p99_ms == pytest.approx(14.0)
    assert outcome.per_s == pytest.approx(1000 / 14.0, rel=1e-6)


def test_the_cores_cap_the_rate_when_every_process_can_use_them() -> None:
    machine = Machine(cores=2, processes={"api": 8, "psp": 8}, path=PATH)
    outcome = run(machine, clients=64, charges=4000)
    assert outcome.per_s == pytest.approx(2 / 0.004, rel=0.05)
    assert outcome.saturated_first == "cores" and outcome.cores_busy > 0.95


def test_one_process_that_runs_one_burst_at_a_time_caps_the_rate_before_the_cores() -> None:
    machine = Machine(cores=4, processes={"api": 1, "psp": 4}, path=PATH)
    outcome = run(machine, clients=64, charges=4000)
    assert outcome.per_s == pytest.approx(1 / 0.003, rel=0.05)
    assert outcome.saturated_first == "api" and outcome.utilisation["api"] > 0.95


def test_closed_loop_latency_follows_littles_law() -> None:
    machine = Machine(cores=2, processes={"api": 1, "psp": 2}, path=PATH)
    for clients in (1, 4, 32):
        outcome = run(machine, clients=clients, charges=3000)
        mean_s = clients / outcome.per_s
        assert outcome.p50_ms / 1000 < 2 * mean_s and outcome.p99_ms / 1000 > mean_s


def test_batches_grow_with_the_load_and_lower_the_cpu_per_charge() -> None:
    batch = Batch("host", call_s=0.0015, item_s=0.0002, commit=Burst("postgres", 0.0005, wait_s=0.001))
    machine = Machine(cores=2, processes={"api": 2, "psp": 2, "host": 1, "postgres": 8}, path=PATH,
                      batch=batch, batch_at=2)  # fmt: skip
    light, heavy = run(machine, clients=1, charges=1000), run(machine, clients=64, charges=4000)
    assert light.mean_batch == pytest.approx(1.0)
    assert heavy.mean_batch is not None and heavy.mean_batch > 2
    assert heavy.utilisation["host"] < 0.9  # the host's call is shared by its batch


def test_a_run_repeats_under_its_seed() -> None:
    machine = Machine(cores=2, processes={"api": 1, "psp": 1}, path=PATH)
    assert run(machine, clients=8, charges=500, seed=3).as_dict() == run(machine, 8, 500, seed=3).as_dict()


def test_a_process_scaled_spends_that_much_more() -> None:
    machine = Machine(cores=2, processes={"api": 1, "psp": 1}, path=PATH)
    assert machine.scaled("api", 2.0).cpu_per_charge() == pytest.approx({"api": 0.006, "psp": 0.001})


def test_what_a_process_spends_at_rest_takes_cores_from_the_charges() -> None:
    machine = Machine(cores=1, processes={"api": 1, "psp": 1, "ray": 4}, path=PATH, variability=0)
    busy = replace(machine, background={"ray": 0.5})
    alone, beside = run(machine, clients=16, charges=3000), run(busy, clients=16, charges=3000)
    assert beside.per_s == pytest.approx(alone.per_s / 2, rel=0.1)
    assert beside.utilisation["ray"] == pytest.approx(0.5 / 4, rel=0.15)


def test_the_caller_pays_a_batched_call_once_per_batch() -> None:
    batch = Batch("host", call_s=0.001, item_s=0.0001, commit=Burst("postgres", 0.0002),
                  caller=Burst("api", 0.002))  # fmt: skip
    machine = Machine(cores=2, processes={"api": 1, "psp": 2, "host": 1, "postgres": 4}, path=PATH,
                      batch=batch, batch_at=2)  # fmt: skip
    outcome = run(machine, clients=32, charges=3000)
    assert outcome.mean_batch is not None and outcome.mean_batch > 2
    api_per_charge = outcome.utilisation["api"] / outcome.per_s
    assert api_per_charge == pytest.approx(0.003 + 0.002 / outcome.mean_batch, rel=0.1)


def test_the_latency_quantiles_rise_from_the_fastest_to_the_slowest() -> None:
    outcome = run(Machine(cores=2, processes={"api": 1, "psp": 1}, path=PATH), clients=4, charges=1000)
    assert len(outcome.quantiles_ms) == 21 and outcome.quantiles_ms == sorted(outcome.quantiles_ms)
    assert outcome.quantiles_ms[10] == outcome.p50_ms


def test_a_niced_process_gets_a_core_only_when_no_other_burst_wants_one() -> None:
    path = (Burst("api", 0.002), Burst("psp", 0.002, wait_s=0.004))
    machine = Machine(cores=1, processes={"api": 1, "psp": 1, "ray": 1}, path=path, background={"ray": 0.3})
    niced = replace(machine, niced=frozenset({"ray"}))
    plain, yielding = run(machine, clients=2, charges=3000), run(niced, clients=2, charges=3000)
    assert yielding.p50_ms < 0.9 * plain.p50_ms  # the charges no longer wait for the niced work
    assert plain.utilisation["ray"] == pytest.approx(0.3, rel=0.1)
    assert 0.05 < yielding.utilisation["ray"] < 0.25  # it runs in what the charges leave of the core
