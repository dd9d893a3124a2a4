"""PSP webhooks: the emulator's signed deliveries (and hand-signed events) against the running stack.

Signatures are checked by the Stripe SDK; each event is applied once, whatever the delivery does (late,
twice, out of order); forged, stale or unsigned events are refused and leave nothing behind.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from ops.stack import EMULATOR_API_KEY, HANDLED_EVENTS, StackInfo
from psp.emulator.webhooks import sign
from tests.integration.polling import until
from tests.integration.stack_fixtures import WEBHOOK_SECRETS, Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

CURRENT, PREVIOUS = WEBHOOK_SECRETS


def event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    body = {
        "id": event_id or f"evt_test{uuid.uuid4().hex}",
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(body).encode()


def deliver(
    stack: StackInfo,
    payload: bytes,
    secret: str | None = CURRENT,
    at: int | None = None,
    header: str | None = None,
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    elif secret is not None:
        headers["Stripe-Signature"] = sign(secret, payload, at or int(time.time()))
    return httpx.post(f"{stack.base_url}/v1/webhooks/psp", content=payload, headers=headers, timeout=60)


def recorded(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_events").fetchone()
    assert row is not None
    return int(row[0])


def postings(database_url: str, external_ref: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kind FROM ledger_transactions WHERE external_ref = %s ORDER BY posted_at, kind",
            (external_ref,),
        ).fetchall()
    return [kind for (kind,) in rows]


@pytest.fixture
def psp_api(stack: StackInfo) -> Iterator[httpx.Client]:
    assert stack.psp_api_base is not None
    with httpx.Client(
        base_url=stack.psp_api_base, headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"}, timeout=60
    ) as client:
        yield client


# -- signatures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["unsigned", "wrong secret", "stale", "tampered", "garbage header"],
)
def test_bad_signatures_are_refused_and_record_nothing(
    stack: StackInfo, api_database_url: str, how: str
) -> None:
    payload = event("charge.succeeded", {"id": "ch_x", "metadata": {}})
    before = recorded(api_database_url)
    if how == "unsigned":
        answer = deliver(stack, payload, secret=None)
    elif how == "wrong secret":
        answer = deliver(stack, payload, secret="whsec_" + uuid.uuid4().hex)
    elif how == "stale":
        answer = deliver(stack, payload, at=int(time.time()) - 301)
    elif how == "tampered":
        header = sign(CURRENT, payload, int(time.time()))
        answer = deliver(stack, payload.replace(b"ch_x", b"ch_y"), header=header)
    else:
        answer = deliver(stack, payload, header="t=oops,v1=nothing")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert recorded(api_database_url) == before


@pytest.mark.parametrize(
    ("type_", "obj", "param"),
    [
        ("charge.dispute.created", {"id": "dp_1", "amount": "abc", "currency": "usd", "status": "x"},
         "data[object][amount]"),
        ("charge.dispute.created", {"amount": 100, "currency": "usd", "status": "needs_response"},
         "data[object][id]"),
        ("charge.dispute.closed", {"id": "dp_1", "amount": 100, "currency": "usd", "status": "won\u0000"},
         "data[object][status]"),
        ("charge.succeeded", {"id": "ch_\u0000", "metadata": {}}, "data[object][id]"),
        ("charge.refunded", {"id": "ch_1", "metadata": {"k": "v\u0000"}, "amount_refunded": 5},
         "data[object][metadata][k]"),
        ("charge.refunded", {"id": "ch_1", "amount_refunded": -5}, "data[object][amount_refunded]"),
    ],
)  # fmt: skip
def test_a_signed_event_of_the_wrong_shape_is_refused_and_records_nothing(
    stack: StackInfo, api_database_url: str, type_: str, obj: dict[str, Any], param: str
) -> None:
    before = recorded(api_database_url)
    payload = event(type_, obj)
    answer = deliver(stack, payload)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert recorded(api_database_url) == before
    no_id = json.loads(payload)
    del no_id["id"]
    assert deliver(stack, json.dumps(no_id).encode()).status_code == 400
    assert recorded(api_database_url) == before


def test_during_a_rotation_both_secrets_and_several_signatures_pass(stack: StackInfo) -> None:
    assert deliver(stack, event("ping.test", {"id": "x"}), secret=PREVIOUS).status_code == 200
    payload = event("ping.test", {"id": "y"})
    now = int(time.time())
    stale_sig = sign("whsec_retired", payload, now).split(",")[1]
    good = sign(CURRENT, payload, now)
    answer = deliver(stack, payload, header=f"{good},{stale_sig}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["effect"].startswith("ignored")


def test_a_redelivered_event_is_applied_once(stack: StackInfo, api_database_url: str) -> None:
    payload = event("ping.test", {"id": "z"})
    first, again = deliver(stack, payload), deliver(stack, payload)
    assert first.status_code == again.status_code == 200
    assert again.json()["effect"].startswith("duplicate")
    event_id = json.loads(payload)["id"]
    with psycopg.connect(api_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_events WHERE id = %s", (event_id,)).fetchone()
    assert row == (1,)


# -- charges and refunds ------------------------------------------------------------------------------------


def test_a_late_charge_succeeded_resolves_a_pending_charge(merchant: Merchant, faults: Any) -> None:
    faults(timeout_after_capture_rate=1.0, only_paths=["/v1/payment_intents"])
    pending = merchant.charge(amount=4200)
    assert pending.status_code == 202, pending.text
    faults()
    charge_id = pending.json()["id"]
    # nobody retries: the emulator's charge.succeeded delivery alone settles it
    until(lambda: merchant.client.get(f"/v1/charges/{charge_id}").json()["status"] == "succeeded")
    assert merchant.available() == 4200 - (4200 * 290 + 5000) // 10000


def test_a_late_charge_failed_declines_a_pending_charge(
    merchant: Merchant, stack: StackInfo, faults: Any
) -> None:
    faults(error_rate=1.0, error_status=503, only_paths=["/v1/payment_intents"])
    pending = merchant.charge(amount=999)
    assert pending.status_code == 202, pending.text
    faults()
    charge_id = pending.json()["id"]
    obj = {
        "id": f"ch_psp{uuid.uuid4().hex[:10]}",
        "object": "charge",
        "payment_intent": f"pi_psp{uuid.uuid4().hex[:10]}",
        "failure_code": "card_declined",
        "failure_message": "Your card was declined.",
        "metadata": {"payray_payment_id": charge_id},
    }
    answer = deliver(stack, event("charge.failed", obj))
    assert answer.status_code == 200 and "-> declined" in answer.json()["effect"], answer.text
    charge = merchant.client.get(f"/v1/charges/{charge_id}").json()
    assert charge["status"] == "failed" and charge["failure_code"] == "card_declined"
    # a charge.succeeded arriving after the decline changes nothing
    late = deliver(stack, event("charge.succeeded", {**obj, "metadata": {"payray_payment_id": charge_id}}))
    assert late.json()["effect"].startswith("no change")


def test_a_refund_made_at_the_psp_is_learned_from_its_webhook(
    merchant: Merchant, psp_api: httpx.Client, api_database_url: str
) -> None:
    response = merchant.charge(amount=2000)
    assert response.status_code == 200
    charge = response.json()
    outside = psp_api.post("/v1/refunds", data={"payment_intent": charge["psp_reference"], "amount": "500"})
    assert outside.status_code == 200, outside.text

    def learned() -> list[dict[str, Any]]:
        return merchant.client.get("/v1/refunds", params={"charge": charge["id"]}).json()["data"]  # type: ignore[no-any-return]

    until(lambda: bool(learned()) and learned()[0]["status"] == "succeeded")
    [refund] = learned()
    assert refund["amount"] == 500 and refund["psp_reference"] == outside.json()["id"]
    fee = (2000 * 290 + 5000) // 10000
    assert merchant.available() == 2000 - fee - (500 - fee * 500 // 2000)
    assert merchant.client.get(f"/v1/charges/{charge['id']}").json()["amount_refunded"] == 500
    assert postings(api_database_url, refund["id"]) == ["refund"]
    # payray's own refunds of the same charge keep counting what is left
    rest = merchant.refund(charge["id"])
    assert rest.status_code == 200 and rest.json()["amount"] == 1500, rest.text


# -- disputes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["won", "lost"])
def test_a_dispute_holds_the_amount_then_releases_or_debits_it(
    merchant: Merchant, psp_api: httpx.Client, psp_control: httpx.Client, api_database_url: str, outcome: str
) -> None:
    charge = merchant.charge(amount=3000).json()
    available = merchant.available()
    opened = psp_control.post(
        "/_emulator/disputes", json={"payment_intent": charge["psp_reference"], "amount": 1200}
    )
    assert opened.status_code == 200, opened.text

    def disputes() -> list[dict[str, Any]]:
        return merchant.client.get("/v1/disputes").json()["data"]  # type: ignore[no-any-return]

    until(lambda: bool(disputes()) and merchant.available() == available - 1200)
    [dispute] = disputes()
    assert dispute["status"] == "needs_response" and dispute["amount"] == 1200
    assert dispute["charge"] == charge["id"] and dispute["psp_reference"] == opened.json()["id"]
    closed = psp_control.post(f"/_emulator/disputes/{opened.json()['id']}/close", json={"status": outcome})
    assert closed.status_code == 200, closed.text
    expected = available if outcome == "won" else available - 1200
    # the status is the PSP's decision; the balance follows once the release or loss is booked
    until(lambda: disputes()[0]["status"] == outcome and merchant.available() == expected)
    assert merchant.available() == expected
    assert merchant.client.get(f"/v1/disputes/{dispute['id']}").json()["status"] == outcome
    release = "dispute_release" if outcome == "won" else "dispute_loss"
    assert sorted(postings(api_database_url, dispute["id"])) == sorted(["dispute_hold", release])


def test_a_dispute_closed_before_it_is_opened_books_once(
    merchant: Merchant, stack: StackInfo, api_database_url: str
) -> None:
    charge = merchant.charge(amount=2500).json()
    available = merchant.available()
    dispute = {
        "id": f"dp_test{uuid.uuid4().hex[:12]}",
        "object": "dispute",
        "amount": 700,
        "currency": "usd",
        "charge": "ch_psp_whatever",
        "payment_intent": charge["psp_reference"],
        "reason": "fraudulent",
        "status": "lost",
    }
    closed = deliver(stack, event("charge.dispute.closed", dispute))
    assert closed.status_code == 200, closed.text
    opened = deliver(stack, event("charge.dispute.created", {**dispute, "status": "needs_response"}))
    assert opened.json()["effect"].startswith("no change")
    [ours] = merchant.client.get("/v1/disputes").json()["data"]
    until(lambda: merchant.client.get(f"/v1/disputes/{ours['id']}").json()["status"] == "lost")
    assert merchant.available() == available - 700
    assert sorted(postings(api_database_url, ours["id"])) == ["dispute_hold", "dispute_loss"]


def test_shuffled_and_duplicated_deliveries_settle_the_same(
    merchant: Merchant, stack: StackInfo, psp_control: httpx.Client, api_database_url: str
) -> None:
    """The emulator delivers every event twice and in shuffled pairs: the outcome is as if once, in order."""
    endpoint = {
        "url": f"{stack.base_url}/v1/webhooks/psp",
        "secret": CURRENT,
        "enabled_events": list(HANDLED_EVENTS),
    }
    charge = merchant.charge(amount=5000).json()
    available = merchant.available()
    chaotic = {**endpoint, "duplicate_rate": 1.0, "reorder_window": 2, "seed": 7}
    assert psp_control.post("/_emulator/webhooks", json=chaotic).status_code == 200
    try:
        opened = psp_control.post(
            "/_emulator/disputes", json={"payment_intent": charge["psp_reference"]}
        ).json()
        psp_control.post(f"/_emulator/disputes/{opened['id']}/close", json={"status": "won"})
        flushed = psp_control.post("/_emulator/webhooks/flush").json()
        assert flushed["idle"], flushed
        sent = psp_control.get("/_emulator/webhooks").json()["attempts"]
        assert sum(a["event_type"] == "charge.dispute.closed" for a in sent) >= 2
    finally:
        assert psp_control.post("/_emulator/webhooks", json=endpoint).status_code == 200
    [dispute] = merchant.client.get("/v1/disputes").json()["data"]
    until(lambda: merchant.client.get(f"/v1/disputes/{dispute['id']}").json()["status"] == "won")
    assert merchant.available() == available
    assert sorted(postings(api_database_url, dispute["id"])) == ["dispute_hold", "dispute_release"]


def test_an_open_and_its_close_delivered_at_the_same_time_settle_once(
    merchant: Merchant, stack: StackInfo, api_database_url: str
) -> None:
    charge = merchant.charge(amount=9000).json()
    available = merchant.available()
    outcomes = ["won", "lost"] * 3
    disputed = []
    for outcome in outcomes:
        dispute = {
            "id": f"dp_race{uuid.uuid4().hex[:12]}",
            "object": "dispute",
            "amount": 100,
            "currency": "usd",
            "payment_intent": charge["psp_reference"],
            "reason": "fraudulent",
        }
        payloads = [
            event("charge.dispute.created", {**dispute, "status": "needs_response"}),
            event("charge.dispute.closed", {**dispute, "status": outcome}),
        ]
        with ThreadPoolExecutor(4) as pool:  # each event twice, all four at once
            answers = list(pool.map(lambda p: deliver(stack, p), payloads * 2))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        disputed.append(dispute["id"])
    ours = {
        d["psp_reference"]: d
        for d in merchant.client.get("/v1/disputes", params={"limit": 100}).json()["data"]
    }
    for psp_id, outcome in zip(disputed, outcomes, strict=True):
        dispute_id = ours[psp_id]["id"]
        until(lambda dispute_id=dispute_id, outcome=outcome: merchant.client.get(
            f"/v1/disputes/{dispute_id}").json()["status"] == outcome)  # fmt: skip
        release = "dispute_release" if outcome == "won" else "dispute_loss"
        assert sorted(postings(api_database_url, dispute_id)) == sorted(["dispute_hold", release])
    assert merchant.available() == available - 100 * outcomes.count("lost")
