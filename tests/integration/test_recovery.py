"""The recovery sweeper finishes what interrupted requests left behind, with the invariants intact.

Each interruption is produced for real: the PSP call is made (or not) with the real SDK against the
emulator, the ledger posting goes through the merchant's real wallet host, and the payment row is left in the
state a crash at that point leaves; or the API replica itself is killed in the middle of a charge.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
import ray
from psycopg.types.json import Jsonb

from actors.wallet_host import host_name
from ledger.postings import capture_posting, dispute_hold_posting, fee_for
from ops.stack import EMULATOR_API_KEY, StackInfo
from payray.charge import psp_idempotency_key
from payray.money import Money
from payray.settings import Settings
from payray.slots import SlotMap
from psp.stripe_adapter import StripePsp
from tests.integration.polling import until
from tests.integration.psp_queries import captures_for_merchant
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant

#: Without webhooks: what the PSP knows reaches payray only through the recovery sweeper under test.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold", "no_webhooks")]

FEE_BPS = 290


def sweep(admin: httpx.Client) -> dict[str, Any]:
    answer = admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def capture_at_psp(stack: StackInfo, payment_id: str, merchant_id: str, payment_method: str) -> str:
    """Capture at the PSP as the charge flow does (same key, same metadata); the PaymentIntent's id."""

    async def capture() -> str:
        psp = StripePsp(EMULATOR_API_KEY, stack.psp_api_base, 5.0, 1)
        try:
            result = await psp.capture(
                payment_id=payment_id,
                amount=1500,
                currency="usd",
                payment_method=payment_method,
                idempotency_key=psp_idempotency_key(payment_id),
                metadata={"payray_merchant_id": merchant_id},
            )
        finally:
            await psp.aclose()
        assert result.psp_reference is not None
        return result.psp_reference

    return asyncio.run(capture())


def leave_payment(
    database_url: str, payment_id: str, merchant_id: str, state: str, psp_reference: str | None
) -> None:
    """The rows a request that died in ``state`` leaves behind: the payment and its claimed key."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        key = f"crashed-{payment_id}"
        conn.execute(
            "INSERT INTO idempotency_keys (merchant_id, key, fingerprint, object_id) VALUES (%s, %s, %s, %s)",
            (merchant_id, key, b"\x00" * 32, payment_id),
        )
        conn.execute(
            """
            INSERT INTO payments (id, merchant_id, amount, currency, fee, payment_method, state,
                                  idempotency_key, psp_idempotency_key, psp_reference, metadata, updated_at)
            VALUES (%s, %s, 1500, 'usd', %s, 'pm_card_visa', %s, %s, %s, %s, %s, now() - interval '1 hour')
            """,
            (
                payment_id,
                merchant_id,
                FEE,
                state,
                key,
                psp_idempotency_key(payment_id),
                psp_reference,
                Jsonb({}),
            ),
        )


def wallet(merchant_id: str) -> Any:
    """The host that holds the merchant's wallet."""
    index = SlotMap(Settings().wallet_hosts).host_of(merchant_id)
    return ray.get_actor(host_name(index), namespace=STACK_NAMESPACE)


def charge_status(merchant: Merchant, payment_id: str) -> str:
    return str(merchant.client.get(f"/v1/charges/{payment_id}").json()["status"])


FEE = fee_for(Money(1500, "usd"), FEE_BPS).amount
NET = 1500 - FEE


@pytest.mark.parametrize(
    ("state", "at_psp", "posted", "expected", "credited"),
    [
        ("psp_pending", "pm_card_visa", False, "succeeded", NET),  # died waiting for the PSP, which captured
        ("psp_pending", None, False, "failed", 0),  # died before the PSP heard of it
        ("unknown", "pm_card_visa", False, "succeeded", NET),  # answered 202, nobody came back
        ("unknown", "pm_card_chargeDeclined", False, "failed", 0),  # ...and the PSP had declined it
        ("captured", "pm_card_visa", False, "succeeded", NET),  # died between the PSP and the ledger
        ("posted", "pm_card_visa", True, "succeeded", NET),  # died after booking, before answering
        ("refund_pending", "pm_card_visa", False, "failed", 0),  # died compensating a failed booking
    ],
)
def test_a_payment_interrupted_at_each_step_is_finished(
    merchant: Merchant,
    stack: StackInfo,
    admin: httpx.Client,
    api_database_url: str,
    state: str,
    at_psp: str | None,
    posted: bool,
    expected: str,
    credited: int,
) -> None:
    payment_id = f"ch_crash{uuid.uuid4().hex[:16]}"
    psp_reference = capture_at_psp(stack, payment_id, merchant.id, at_psp) if at_psp else None
    known_reference = psp_reference if state in ("captured", "posted", "refund_pending") else None
    if posted:
        posting = capture_posting(
            payment_id, merchant.id, Money(1500, "usd"), fee_for(Money(1500, "usd"), FEE_BPS)
        )
        [result] = ray.get(wallet(merchant.id).post_many.remote([posting]))
        assert result.ok
    leave_payment(api_database_url, payment_id, merchant.id, state, known_reference)

    counts = sweep(admin)["counts"]
    assert counts.get("payments_found", 0) >= 1 and not counts.get("payments_failed"), counts
    assert charge_status(merchant, payment_id) == expected
    assert merchant.available() == credited
    assert sweep(admin)["counts"].get("payments_found", 0) == 0  # nothing left behind


def kill_the_api_mid_charge(merchant: Merchant, key: str, database_url: str) -> tuple[str, dict[str, Any]]:
    """A charge with ``key`` in flight at the PSP when every API replica is killed: its payment's id, and what
    its client got (``response``, or the ``error`` it saw)."""
    outcome: dict[str, Any] = {}

    def charge() -> None:
        try:
            outcome["response"] = merchant.charge(key, amount=1500)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=charge)
    thread.start()
    payment_id = until(lambda: in_state(database_url, merchant.id, "psp_pending"))
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "PaymentApi" in actor["name"] and actor["namespace"] == "serve":
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=False)
    thread.join(60)
    return payment_id, outcome


def test_killing_the_api_replica_mid_charge_leaves_work_the_sweeper_finishes(
    merchant: Merchant,
    stack: StackInfo,
    admin: httpx.Client,
    api_database_url: str,
    faults: Any,
    psp_control: httpx.Client,
) -> None:
    faults(latency_ms={"dist": "fixed", "ms": 3000}, only_paths=["/v1/payment_intents"])
    payment_id, outcome = kill_the_api_mid_charge(merchant, "killed-mid-flight", api_database_url)
    assert "error" in outcome or outcome["response"].status_code >= 500, outcome
    # the PSP finishes the capture it was given before the replica died
    until(lambda: captures_for_merchant(psp_control, merchant.id))
    faults()
    until(lambda: httpx.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200 or None)
    assert charge_status(merchant, payment_id) == "pending"
    sweep(admin)
    assert charge_status(merchant, payment_id) == "succeeded"
    assert merchant.available() == NET
    # the client's retry with its key now gets the settled charge, captured once
    retried = merchant.charge("killed-mid-flight", amount=1500)
    assert retried.status_code == 200 and retried.json()["id"] == payment_id, retried.text


def test_a_retry_takes_over_at_once_the_key_of_a_request_that_died_with_its_replica(
    merchant: Merchant,
    stack: StackInfo,
    api_database_url: str,
    faults: Any,
    psp_control: httpx.Client,
) -> None:
    """Found by ``payray chaos``: a client retrying a key whose request died with its replica got 409 until
    the key's lease ran out (a minute). The lease names its holder; with the holder gone, the retry finishes
    it."""
    faults(latency_ms={"dist": "fixed", "ms": 3000}, only_paths=["/v1/payment_intents"])
    payment_id, _ = kill_the_api_mid_charge(merchant, "died-with-its-replica", api_database_url)
    until(lambda: captures_for_merchant(psp_control, merchant.id))
    faults()
    until(lambda: httpx.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200 or None)
    with psycopg.connect(api_database_url) as conn:
        leased = conn.execute(
            "SELECT locked_until > now(), holder FROM idempotency_keys WHERE merchant_id = %s AND key = %s",
            (merchant.id, "died-with-its-replica"),
        ).fetchone()
    assert leased is not None and leased[0] and leased[1], "the dead request's lease still runs"

    retried = merchant.charge("died-with-its-replica", amount=1500)
    assert retried.status_code == 200 and retried.json()["id"] == payment_id, retried.text
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1
    assert merchant.available() == NET


def test_a_refund_and_a_payout_left_behind_are_finished(
    merchant: Merchant, admin: httpx.Client, api_database_url: str, faults: Any
) -> None:
    charge = merchant.charge(amount=5000).json()
    faults(error_rate=1.0, error_status=503, only_paths=["/v1/refunds"])
    pending = merchant.refund(charge["id"], amount=1000)
    assert pending.status_code == 202, pending.text
    faults()
    payout_id = f"po_crash{uuid.uuid4().hex[:16]}"
    with psycopg.connect(api_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO payouts (id, merchant_id, amount, currency, state, idempotency_key, updated_at)"
            " VALUES (%s, %s, 700, 'usd', 'pending', %s, now() - interval '1 hour')",
            (payout_id, merchant.id, f"crashed-{payout_id}"),
        )
    available = merchant.available()
    counts = sweep(admin)["counts"]
    assert counts.get("refunds_finished", 0) >= 1 and counts.get("payouts_finished", 0) >= 1, counts
    assert merchant.client.get(f"/v1/refunds/{pending.json()['id']}").json()["status"] == "succeeded"
    assert merchant.client.get(f"/v1/payouts/{payout_id}").json()["status"] == "in_transit"
    assert merchant.available() == available - 700


def test_a_dispute_whose_hold_was_never_booked_is_booked(
    merchant: Merchant, admin: httpx.Client, api_database_url: str
) -> None:
    charge = merchant.charge(amount=3000).json()
    available = merchant.available()
    dispute_id = f"du_crash{uuid.uuid4().hex[:16]}"
    with psycopg.connect(api_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO disputes (id, merchant_id, payment_id, psp_dispute_id, amount, currency, status,"
            " updated_at) VALUES (%s, %s, %s, %s, 800, 'usd', 'closing_lost', now() - interval '1 hour')",
            (dispute_id, merchant.id, charge["id"], f"dp_{uuid.uuid4().hex}"),
        )
    # the hold was booked before the crash; the loss was not
    hold = dispute_hold_posting(dispute_id, merchant.id, Money(800, "usd"))
    assert ray.get(wallet(merchant.id).post_many.remote([hold]))[0].ok
    sweep(admin)
    assert merchant.client.get(f"/v1/disputes/{dispute_id}").json()["status"] == "lost"
    assert merchant.available() == available - 800


def in_state(database_url: str, merchant_id: str, state: str) -> str | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id FROM payments WHERE merchant_id = %s AND state = %s", (merchant_id, state)
        ).fetchone()
    return row[0] if row else None


def test_killing_every_wallet_host_between_charges_loses_nothing(
    merchant: Merchant, admin: httpx.Client
) -> None:
    assert merchant.charge(amount=1000).status_code == 200
    for index in range(Settings().wallet_hosts):
        ray.kill(ray.get_actor(host_name(index), namespace=STACK_NAMESPACE), no_restart=False)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: merchant.charge(amount=1000 + i), range(8)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    expected = sum(
        amount - fee_for(Money(amount, "usd"), FEE_BPS).amount
        for amount in [1000, *(1000 + i for i in range(8))]
    )
    assert merchant.available() == expected  # the restarted wallet rebuilt itself from Postgres
    assert not sweep(admin)["counts"].get("payments_failed")


def test_a_wallet_host_killed_under_load_costs_no_charge(
    new_merchant: Callable[[], Merchant], admin: httpx.Client
) -> None:
    """Charges keep coming while the host of their merchants dies: Ray restarts it and retries the calls it
    had in flight, so every charge still answers 200, once, and every wallet is rebuilt right."""
    merchants = [new_merchant() for _ in range(4)]
    victim = ray.get_actor(host_name(SlotMap(Settings().wallet_hosts).host_of(merchants[0].id)),
                           namespace=STACK_NAMESPACE)  # fmt: skip
    answered = threading.Semaphore(0)

    def charge(i: int) -> tuple[Merchant, int, httpx.Response]:
        merchant, amount = merchants[i % 4], 1000 + i
        answer = merchant.charge(amount=amount)
        answered.release()
        return merchant, amount, answer

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(charge, i) for i in range(240)]
        for _ in range(60):
            answered.acquire(timeout=120)
        ray.kill(victim, no_restart=False)
        results = [f.result() for f in futures]

    statuses = [answer.status_code for _, _, answer in results]
    assert statuses == [200] * 240, [answer.text for _, _, answer in results if answer.is_error]
    for merchant in merchants:
        charged = [amount for m, amount, _ in results if m is merchant]
        assert merchant.available() == sum(a - fee_for(Money(a, "usd"), FEE_BPS).amount for a in charged)
    assert not sweep(admin)["counts"].get("payments_failed")
