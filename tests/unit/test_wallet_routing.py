"""Where a merchant's wallet lives and when it is let go: slots, hosts and passivation, without Ray."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.wallet import Wallet
from ledger.store import MerchantBalance
from payray.passivation import WalletCache
from payray.slots import DEFAULT_SLOTS, SlotMap

merchant_ids = st.text(min_size=1, max_size=40)


@given(merchant_ids, st.integers(1, 64))
def test_a_merchant_always_maps_to_the_same_slot_and_host(merchant: str, hosts: int) -> None:
    slots = SlotMap(hosts)
    assert slots.slot_of(merchant) == SlotMap(hosts).slot_of(merchant)
    assert 0 <= slots.slot_of(merchant) < DEFAULT_SLOTS
    assert slots.host_of(merchant) == slots.host_of_slot(slots.slot_of(merchant)) < hosts


def test_the_mapping_is_the_same_in_every_process() -> None:
    # CRC-32, not the per-process salted hash: pinned values catch an accidental change of function
    assert SlotMap(2).slot_of("acct_123") == 2043
    assert (
        SlotMap(7, slots=128).host_of("acct_bNKZgoMeRMoIDl23")
        == SlotMap(7, 128).slot_of("acct_bNKZgoMeRMoIDl23") % 7
    )


def test_merchants_spread_evenly_over_hosts() -> None:
    load = Counter(SlotMap(4).host_of(f"acct_{i:06d}") for i in range(20_000))
    assert set(load) == {0, 1, 2, 3}
    assert max(load.values()) < 1.1 * min(load.values())


def test_every_host_owns_many_slots() -> None:
    slots = SlotMap(3, slots=96)
    owned = Counter(slots.host_of_slot(s) for s in range(96))
    assert owned == {0: 32, 1: 32, 2: 32}


@pytest.mark.parametrize(("hosts", "slots"), [(0, 16), (-1, 16), (17, 16)])
def test_a_slot_map_needs_hosts_and_more_slots_than_hosts(hosts: int, slots: int) -> None:
    with pytest.raises(ValueError):
        SlotMap(hosts, slots)


def test_a_slot_outside_the_map_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        SlotMap(2, 16).host_of_slot(16)


class Entry:
    def __init__(self, busy: bool = False) -> None:
        self.busy = busy


def cache(capacity: int = 3, idle_s: float = 10.0) -> WalletCache[Entry]:
    return WalletCache(capacity, idle_s, busy=lambda e: e.busy)


def test_beyond_capacity_the_least_recently_used_goes_first() -> None:
    held = cache(capacity=3)
    for t, key in enumerate("abc"):
        held.put(key, Entry(), now=t)
    held.get("a", now=3)  # a is used again: b is now the oldest
    assert held.put("d", Entry(), now=4) == ["b"]
    assert held.keys() == ["c", "a", "d"]
    assert held.passivated == 1


def test_a_busy_wallet_is_never_passivated_however_old() -> None:
    held = cache(capacity=2)
    busy = Entry(busy=True)
    held.put("busy", busy, now=0)
    held.put("b", Entry(), now=1)
    assert held.put("c", Entry(), now=2) == ["b"]
    assert held.sweep(now=1_000) == ["c"]
    assert held.keys() == ["busy"]
    busy.busy = False
    assert held.sweep(now=1_000) == ["busy"]
    assert len(held) == 0


def test_when_every_wallet_is_busy_the_cache_grows_rather_than_drop_one() -> None:
    held = cache(capacity=1)
    held.put("a", Entry(busy=True), now=0)
    assert held.put("b", Entry(busy=True), now=1) == []
    assert len(held) == 2
    held.get("a", now=2).busy = False  # type: ignore[union-attr]
    assert held.put("c", Entry(busy=True), now=3) == ["a"]


def test_a_sweep_passivates_only_wallets_idle_longer_than_the_limit() -> None:
    held = cache(capacity=100, idle_s=10)
    for t, key in enumerate("abcde"):
        held.put(key, Entry(), now=t)
    assert held.sweep(now=12.5) == ["a", "b", "c"]  # used at 0, 1, 2; d (3) and e (4) within 10 s
    assert "d" in held and held.get("a", now=13) is None


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=60), st.integers(1, 5))
def test_the_cache_never_exceeds_its_bound_but_for_busy_wallets(
    uses: list[tuple[str, bool]], capacity: int
) -> None:
    held = cache(capacity=capacity)
    for t, (key, busy) in enumerate(uses):
        entry = held.get(key, now=t)
        if entry is None:
            held.put(key, Entry(busy), now=t)
            assert len(held) <= max(capacity, sum(e.busy for e in held.values()))
        else:
            entry.busy = busy
    held.sweep(now=len(uses) + 1_000)
    assert len(held) == sum(e.busy for e in held.values())


@pytest.mark.parametrize(("capacity", "idle_s"), [(0, 1.0), (1, 0.0)])
def test_a_cache_needs_room_and_a_positive_idle_limit(capacity: int, idle_s: float) -> None:
    with pytest.raises(ValueError):
        WalletCache(capacity, idle_s, busy=lambda _: False)


class OneBalanceLedger:
    """Every merchant's ledger holds one usd balance; nothing is ever posted."""

    async def post(self, posting: object) -> object:
        raise AssertionError("not called")

    async def post_many(self, postings: object) -> object:
        raise AssertionError("not called")

    async def merchant_balances(self, merchant_id: str) -> dict[str, MerchantBalance]:
        return {"usd": MerchantBalance("usd", 123_456_789, 4_321)}

    async def transaction_for(self, kind: str, external_ref: str) -> str | None:
        raise AssertionError("not called")


def test_an_idle_cached_wallet_costs_under_a_kilobyte() -> None:
    """What a host pays per merchant it holds: the wallet loaded from the ledger as a first call loads it,
    its balance, and its place in the cache."""
    ledger = OneBalanceLedger()
    held: WalletCache[Wallet] = WalletCache(1_000_000, 600.0, busy=lambda w: w.busy)
    count = 10_000

    async def load_all() -> None:
        for i in range(count):
            merchant = f"acct_{i:016d}"
            wallet = Wallet(merchant, ledger, ledger)  # type: ignore[arg-type]
            held.put(merchant, wallet, now=float(i))
            assert await wallet.balances() == {"usd": 123_456_789}

    loop = asyncio.new_event_loop()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    loop.run_until_complete(load_all())
    gc.collect()
    per_wallet = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    loop.close()
    assert not any(w.busy for w in held.values())
    print(f"{per_wallet:.0f} bytes per idle cached wallet")
    assert per_wallet <= 1024
