"""Thousands of merchants on a fixed set of wallet hosts: processes stay flat, every invariant holds, and a
charge's capture commits with its answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import ray

from actors.wallet_host import host_name
from bench.cpu_split import proc_stats
from bench.merchants import seed_merchants
from ledger.postings import fee_for
from ops.stack import StackInfo
from payray.money import Money
from payray.settings import Settings
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

MERCHANTS = 2_000
FEE_BPS = 290


def ray_workers() -> tuple[int, list[str]]:
    """Ray's worker processes on this machine (an actor is one), and the stack's named actors."""
    processes = sum(cmdline.startswith("ray::") for _, _, cmdline in proc_stats())
    named = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True))
    return processes, named


def hosts_stats() -> list[dict[str, float]]:
    hosts = [ray.get_actor(host_name(i), namespace=STACK_NAMESPACE) for i in range(Settings().wallet_hosts)]
    return list(ray.get([h.stats.remote() for h in hosts], timeout=60))


@pytest.fixture
def seeded(stack: StackInfo) -> Iterator[list[str]]:
    """Merchants written straight into Postgres (their keys): no wallet anywhere has seen them, so each
    first charge finds and loads its wallet cold."""
    yield seed_merchants(stack.database_url, MERCHANTS, "scale")


def test_two_thousand_merchants_charge_on_a_fixed_set_of_processes(
    stack: StackInfo, seeded: list[str]
) -> None:
    processes_before, actors_before = ray_workers()
    created_before = sum(s["wallets_created"] for s in hosts_stats())

    def charge(key: str) -> int:
        with httpx.Client(base_url=stack.base_url, timeout=120) as client:
            answer = client.post(
                "/v1/charges",
                json={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
            )
        return answer.status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(charge, seeded))

    assert statuses == [200] * MERCHANTS
    processes_after, actors_after = ray_workers()
    assert actors_after == actors_before and processes_after <= processes_before  # no process per merchant
    stats = hosts_stats()
    assert sum(s["wallets_created"] for s in stats) - created_before == MERCHANTS
    assert all(s["wallets"] > 0 for s in stats)  # the merchants spread over every host
    net = 1000 - fee_for(Money(1000, "usd"), FEE_BPS).amount
    for i in range(0, MERCHANTS, MERCHANTS // 20):
        with httpx.Client(base_url=stack.base_url, timeout=60) as client:
            balance = client.get("/v1/balance", headers={"Authorization": f"Bearer {seeded[i]}"}).json()
        assert balance["available"] == [{"amount": net, "currency": "usd"}], f"merchant {i}"


def test_a_capture_its_transitions_and_its_answer_commit_in_one_transaction(
    merchant: Merchant, api_database_url: str
) -> None:
    key = uuid.uuid4().hex
    charge = merchant.charge(key=key)
    assert charge.status_code == 200
    with psycopg.connect(api_database_url) as conn:
        steps = conn.execute(
            "SELECT from_state, event, to_state, at FROM payment_transitions"
            " WHERE payment_id = %s ORDER BY id",
            (charge.json()["id"],),
        ).fetchall()
        posted = conn.execute(
            "SELECT t.posted_at, p.ledger_transaction_id = t.id FROM ledger_transactions t"
            " JOIN payments p ON p.id = t.external_ref WHERE t.kind = 'capture' AND t.external_ref = %s",
            (charge.json()["id"],),
        ).fetchone()
        stored = conn.execute(
            "SELECT response_status, response_body, completed_at FROM idempotency_keys"
            " WHERE merchant_id = %s AND key = %s",
            (merchant.id, key),
        ).fetchone()
    assert [(s[0], s[1], s[2]) for s in steps] == [
        ("created", "submit", "psp_pending"),
        ("psp_pending", "psp_captured", "captured"),
        ("captured", "ledger_posted", "posted"),
        ("posted", "responded", "succeeded"),
    ]
    assert posted is not None and stored is not None
    # now() is the time its transaction began: one transaction wrote the posting, the steps and the answer
    booked_at = {s[3] for s in steps[1:]}
    assert booked_at == {posted[0]} == {stored[2]}
    assert steps[0][3] < posted[0]  # the insert committed on its own, before the PSP was called
    assert posted[1]  # the payment names its ledger transaction
    assert stored[0] == 200 and bytes(stored[1]) == charge.content
