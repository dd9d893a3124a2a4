"""The simulator's wallet hosts: a charge's capture booked in one host transaction, postings routed by the
slot map, hosts dying (and briefly living twice) under load with every invariant kept."""

from __future__ import annotations

import pytest

from payray.charge import ChargeState, booking
from payray.slots import SlotMap
from sim import hosts as sim_hosts
from sim.run import Simulation, simulate
from sim.scenarios import SCENARIOS, SWAPS
from sim.swarm import swarm_config

CHARGES = 400


def test_a_successful_charge_costs_its_insert_and_a_share_of_one_batch_commit() -> None:
    """Production books the capture with ``psp_pending -> captured -> posted -> succeeded`` in the host's
    transaction: two commits per charge at most (the insert, a share of a batch), where there were four."""
    config = SCENARIOS["happy_path"].config(1, 2_000).with_(load={"refund_share": 0.0})
    simulation = Simulation(config, "happy_path")
    result = simulation.run()
    assert result.ok, result.violations[:3]
    succeeded = result.summary["answers"]["succeeded"]
    declined = result.summary["answers"].get("declined", 0)
    commits = result.summary["commits"]
    assert commits["pool"] == succeeded + 2 * declined  # the insert each, and a decline's own transition
    assert commits["host_batches"] <= succeeded
    assert 1.0 < (commits["pool"] - 2 * declined + commits["host_batches"]) / succeeded <= 2.0
    chain = booking(ChargeState.PSP_PENDING)
    for charge in simulation.service.payments.values():
        if charge.state is ChargeState.SUCCEEDED:
            inserted, *booked = charge.history
            assert [t for _, _, t in booked] == list(chain)
            assert len({at for at, _, _ in booked}) == 1  # one transaction, with its posting
            assert inserted[0] < booked[0][0]


def test_under_load_a_host_call_carries_many_postings_and_a_batch_many_calls() -> None:
    """Natural batching at both ends: each replica keeps one call in flight per host, and a host commits what
    arrived within its window, or while it committed, in one transaction. Replicas made light so that the
    hosts, not the API, see 4,000 charges a second, and postings free to the host so that its calls are
    short enough to share a batch."""
    config = (
        SCENARIOS["happy_path"]
        .config(1, 3_000)
        .with_(load={"rate": 4_000.0}, service={"work_s": 0.0002}, hosts={"posting_s": 0.0})
    )
    result = simulate(config, "many_per_call")
    assert result.ok, result.violations[:3]
    hosts = result.summary["hosts"]
    assert hosts["calls"] < hosts["postings"] / 3 and hosts["batches"] < 0.8 * hosts["calls"]


def test_postings_for_a_merchant_always_reach_its_slot_map_host(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[tuple[int, str]] = []
    receive = sim_hosts.Host.receive

    def spying(host: sim_hosts.Host, call: sim_hosts.HostCall) -> None:
        received.extend((host.index, posting.merchant) for posting in call.postings)
        receive(host, call)

    monkeypatch.setattr(sim_hosts.Host, "receive", spying)
    config = (
        SCENARIOS["host_crash"]
        .config(2, CHARGES)
        .with_(load={"merchants": 64}, hosts={"hosts": 3, "slots": 256})
    )
    simulation = Simulation(config, "host_crash")
    result = simulation.run()
    assert result.ok, result.violations[:3]
    slots = SlotMap(3, 256)
    assert received and all(slots.host_of(merchant) == index for index, merchant in received)
    assert len({index for index, _ in received}) == 3
    for host in simulation.service.hosts.live():
        held = host.wallets.keys()
        assert all(slots.host_of(merchant) == host.index for merchant in held)


@pytest.mark.parametrize("duplicate_s", [0.0, 0.5], ids=["one_copy", "two_copies_for_a_while"])
def test_a_host_that_dies_under_load_has_its_calls_retried_and_the_books_stay_right(
    duplicate_s: float,
) -> None:
    """One host for every merchant, dying every few hundred milliseconds while charges and refunds flow: its
    unanswered calls run again on the new copy (some after committing already, or while the old copy still
    writes), wallets are rebuilt from the ledger, and every invariant holds."""
    retried = 0
    for seed in range(1, 6):
        config = (
            SCENARIOS["host_crash"]
            .config(seed, CHARGES)
            .with_(
                hosts={
                    "hosts": 1,
                    "crashes": (0.2, 0.4, 0.6, 0.8, 1.0),
                    "restart_s": 0.15,
                    "duplicate_s": duplicate_s,
                },
                load={"rate": 300.0},
            )
        )
        result = simulate(config, "host_crash")
        assert result.ok, (seed, result.violations[:3], result.first_history)
        assert result.summary["hosts"]["crashes"] == 5
        retried += result.summary["hosts"]["calls_retried"]
    assert retried >= 10


def test_wallets_passivate_and_load_again_from_the_ledger() -> None:
    """A host that may keep two wallets among sixteen merchants lets idle ones go and reloads them on use;
    the wallets it holds at the end still equal the ledger."""
    config = (
        SCENARIOS["psp_timeouts"].config(3, CHARGES).with_(load={"merchants": 16}, hosts={"wallet_cache": 2})
    )
    result = simulate(config, "passivation")
    assert result.ok, result.violations[:3]
    hosts = result.summary["hosts"]
    assert hosts["passivated_live"] > 50 and hosts["wallet_loads"] > hosts["passivated_live"]


def test_a_ledger_that_writes_a_retried_posting_again_is_caught() -> None:
    """Postgres is the arbiter only if a posting written twice (a retried call, the old copy of a host) is
    written once: without the (kind, reference) key, the ledger books more than the PSP moved."""
    swap = SWAPS["non_idempotent_postings"]
    for seed in (1, 2, 3):
        result = simulate(swap.config(seed, CHARGES), swap.name)
        assert "psp_matches_ledger" in {v.invariant for v in result.violations}, seed
        assert result.summary["hosts"]["crashes"] > 0


def test_swarm_worlds_with_host_crashes_are_clean() -> None:
    crashed = 0
    for seed in range(1, 61):
        config = swarm_config(seed, 300)
        if not config.hosts.crashes:
            continue
        result = simulate(config, "swarm")
        assert result.ok, (seed, result.violations[:3])
        crashed += result.summary["hosts"].get("crashes", 0) > 0
    assert crashed >= 10
