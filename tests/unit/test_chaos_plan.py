"""The chaos schedule: every fault once a round, each alone in its slot, the same for the same seed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.chaos.inject import INJECTORS
from ops.chaos.plan import FAULTS, parse_faults, run_time_s, schedule
from ops.cli import main

names = st.lists(st.sampled_from(sorted(FAULTS)), min_size=1, unique=True)


@given(names, st.integers(0, 2**31), st.floats(10, 120), st.integers(1, 4))
def test_each_fault_once_a_round_alone_in_its_slot(
    faults: list[str], seed: int, slot: float, rounds: int
) -> None:
    planned = schedule(faults, seed, slot, warmup_s=5, rounds=rounds)
    assert sorted(p.fault for p in planned) == sorted(faults * rounds)
    start = 5.0
    for p in planned:
        assert (
            start - 1e-3 <= p.at_s <= start + slot / 5 + 1e-3
        )  # early in its own slots: the rest is for recovery
        start += FAULTS[p.fault].slots * slot
    assert start == pytest.approx(run_time_s(faults, slot, 5, rounds))
    assert all(a.at_s < b.at_s for a, b in itertools.pairwise(planned))
    assert schedule(faults, seed, slot, 5, rounds) == planned


def test_the_seed_changes_the_order() -> None:
    orders = {tuple(p.fault for p in schedule(list(FAULTS), seed, 12, 5)) for seed in range(5)}
    assert len(orders) > 1


def test_a_slot_too_short_for_the_longest_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="no time to recover"):
        schedule(["psp-timeouts"], 1, FAULTS["psp-timeouts"].lasts_s + 1, 5)


def test_faults_are_parsed_by_name_or_all() -> None:
    assert parse_faults("all") == list(FAULTS)
    assert parse_faults(" node-lost , psp-outage") == ["node-lost", "psp-outage"]
    for bad in ("", "node-lost,nope", "node-lost,node-lost"):
        with pytest.raises(ValueError):
            parse_faults(bad)


def test_every_fault_has_its_injector() -> None:
    assert INJECTORS.keys() == FAULTS.keys()


@pytest.mark.parametrize(
    "argv",
    [
        ["chaos", "--faults", "nope"],
        ["chaos", "--nodes", "1"],
        ["chaos", "--nodes", "9"],
        ["chaos", "--users", "0"],
        ["chaos", "--slot", "3"],
        ["chaos", "--rounds", "0"],
        ["chaos", "--json", "/no/such/dir/out.json"],
    ],
)
def test_chaos_refuses_bad_options_before_starting_anything(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("payray chaos: error:")
