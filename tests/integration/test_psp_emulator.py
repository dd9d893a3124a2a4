"""The PSP emulator driven by the real stripe SDK over loopback HTTP, faults included."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from psp.emulator.server import EmulatorProcess

pytestmark = pytest.mark.integration

API_KEY = "sk_test_123"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-emulator")) as process:
        yield process


@pytest.fixture
def base(emulator: EmulatorProcess) -> Iterator[str]:
    assert emulator.url is not None
    yield emulator.url
    control(emulator.url, "DELETE", "/_emulator/faults")
    control(emulator.url, "POST", "/_emulator/clock", {"now": None})


def control(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.request(method, base + path, json=body, timeout=5)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def client(base: str, *, timeout: float = 5.0, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": base},
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def pi_params(pm: str = "pm_card_visa", amount: int = 1000, **extra: Any) -> Any:
    return {
        "amount": amount,
        "currency": "usd",
        "payment_method": pm,
        "confirm": True,
        "payment_method_types": ["card"],
        **extra,
    }


def key() -> str:
    return f"test-{uuid.uuid4()}"


def captures_for(base: str, idempotency_key: str) -> int:
    stats = httpx.get(f"{base}/_emulator/stats", params={"idempotency_key": idempotency_key}).json()
    count: int = stats["captures_by_idempotency_key"][idempotency_key]
    return count


def test_confirmed_payment_intent_captures_a_charge(base: str) -> None:
    sdk = client(base)
    intent = sdk.v1.payment_intents.create(pi_params(metadata={"order": "42"}, description="tea"))
    assert intent.status == "succeeded" and intent.amount_received == 1000 and intent.amount_capturable == 0
    assert intent.last_response is not None and intent.last_response.headers["Request-Id"].startswith("req_")
    assert isinstance(intent.latest_charge, str)
    charge = sdk.v1.charges.retrieve(intent.latest_charge)
    assert charge.captured and charge.amount_captured == 1000 and charge.status == "succeeded"
    assert charge.payment_intent == intent.id and charge.metadata["order"] == "42"
    assert charge.outcome is not None and charge.outcome.type == "authorized"
    expanded = sdk.v1.payment_intents.retrieve(intent.id, {"expand": ["latest_charge"]})
    assert not isinstance(expanded.latest_charge, str) and expanded.latest_charge is not None
    assert expanded.latest_charge.id == charge.id


@pytest.mark.parametrize(
    ("payment_method", "code", "decline_code"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ],
)
def test_decline_tokens_raise_card_error(
    base: str, payment_method: str, code: str, decline_code: str
) -> None:
    sdk = client(base)
    with pytest.raises(stripe.CardError) as caught:
        sdk.v1.payment_intents.create(pi_params(payment_method))
    err = caught.value
    assert err.http_status == 402 and err.code == code
    assert err.error is not None and err.error.decline_code == decline_code
    assert err.error.payment_intent is not None and err.error.charge is not None
    intent = sdk.v1.payment_intents.retrieve(err.error.payment_intent.id)
    assert intent.status == "requires_payment_method"
    assert intent.last_payment_error is not None and intent.last_payment_error.code == code
    charge = sdk.v1.charges.retrieve(err.error.charge)
    assert charge.status == "failed" and charge.failure_code == code and not charge.captured


@pytest.mark.parametrize(
    ("number", "decline_code"),
    [
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
        ("4000000000009987", "lost_card"),
        ("4242424242424242", None),
    ],
)
def test_raw_card_numbers(base: str, number: str, decline_code: str | None) -> None:
    sdk = client(base)
    pm = sdk.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    assert pm.card is not None and pm.card.last4 == number[-4:]
    assert sdk.v1.payment_methods.retrieve(pm.id).id == pm.id
    if decline_code is None:
        assert sdk.v1.payment_intents.create(pi_params(pm.id)).status == "succeeded"
        return
    with pytest.raises(stripe.CardError) as caught:
        sdk.v1.payment_intents.create(pi_params(pm.id))
    assert caught.value.error is not None and caught.value.error.decline_code == decline_code


def test_invalid_card_number_is_a_card_error(base: str) -> None:
    with pytest.raises(stripe.CardError) as caught:
        client(base).v1.payment_methods.create({"type": "card", "card": {"number": "4242424242424241"}})
    assert caught.value.code == "incorrect_number"


def test_idempotent_replay_returns_the_same_intent(base: str) -> None:
    sdk, k = client(base), key()
    first = sdk.v1.payment_intents.create(pi_params(), options={"idempotency_key": k})
    again = sdk.v1.payment_intents.create(pi_params(), options={"idempotency_key": k})
    assert again.id == first.id and again.latest_charge == first.latest_charge
    assert first.last_response is not None and "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response is not None and again.last_response.headers["Idempotent-Replayed"] == "true"
    assert captures_for(base, k) == 1


def test_declines_are_replayed_too(base: str) -> None:
    sdk, k = client(base), key()
    errors = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as caught:
            sdk.v1.payment_intents.create(pi_params("pm_card_chargeDeclined"), options={"idempotency_key": k})
        errors.append(caught.value)
    assert errors[0].error is not None and errors[1].error is not None
    assert errors[0].error.payment_intent is not None and errors[1].error.payment_intent is not None
    assert errors[0].error.payment_intent.id == errors[1].error.payment_intent.id
    assert errors[1].headers is not None and errors[1].headers.get("Idempotent-Replayed") == "true"


def test_same_key_with_other_params_is_an_idempotency_error(base: str) -> None:
    sdk, k = client(base), key()
    sdk.v1.payment_intents.create(pi_params(amount=1000), options={"idempotency_key": k})
    with pytest.raises(stripe.IdempotencyError):
        sdk.v1.payment_intents.create(pi_params(amount=2000), options={"idempotency_key": k})
    assert captures_for(base, k) == 1


def test_concurrent_identical_creates_make_one_intent(base: str) -> None:
    control(base, "POST", "/_emulator/faults", {"latency_ms": {"dist": "fixed", "ms": 300}})
    sdk, k = client(base, retries=5), key()
    marker = uuid.uuid4().hex

    def create(_: int) -> str:
        intent = sdk.v1.payment_intents.create(
            pi_params(metadata={"marker": marker}), options={"idempotency_key": k}
        )
        return intent.id

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(create, range(20)))
    assert len(set(ids)) == 1
    found = sdk.v1.payment_intents.search({"query": f"metadata['marker']:'{marker}'"})
    assert [i.id for i in found.data] == ids[:1]
    assert captures_for(base, k) == 1


def test_refunds_partial_full_and_over_refund(base: str) -> None:
    sdk = client(base)
    intent = sdk.v1.payment_intents.create(pi_params(amount=1000))
    partial = sdk.v1.refunds.create(
        {
            "payment_intent": intent.id,
            "amount": 300,
            "reason": "requested_by_customer",
            "metadata": {"why": "test"},
        }
    )
    assert partial.amount == 300 and partial.status == "succeeded"
    assert partial.metadata is not None and partial.metadata["why"] == "test"
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        sdk.v1.refunds.create({"payment_intent": intent.id, "amount": 701})
    assert too_much.value.code == "amount_too_large"
    assert isinstance(intent.latest_charge, str)
    rest = sdk.v1.refunds.create({"charge": intent.latest_charge})
    assert rest.amount == 700
    with pytest.raises(stripe.InvalidRequestError) as done:
        sdk.v1.refunds.create({"payment_intent": intent.id, "amount": 1})
    assert done.value.code == "charge_already_refunded"
    charge = sdk.v1.charges.retrieve(intent.latest_charge)
    assert charge.refunded and charge.amount_refunded == 1000
    listed = sdk.v1.refunds.list({"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, partial.id]
    assert sdk.v1.refunds.list({"charge": intent.latest_charge}).data[0].id == rest.id
    assert sdk.v1.refunds.retrieve(partial.id).charge == intent.latest_charge
    txn = sdk.v1.balance_transactions.retrieve(str(rest.balance_transaction))
    assert (txn.amount, txn.fee, txn.net, txn.type, txn.reporting_category) == (
        -700,
        0,
        -700,
        "refund",
        "refund",
    )


def test_no_refund_of_failed_or_uncaptured_charges(base: str) -> None:
    sdk = client(base)
    with pytest.raises(stripe.CardError) as declined:
        sdk.v1.payment_intents.create(pi_params("pm_card_chargeDeclined"))
    assert declined.value.error is not None and declined.value.error.charge is not None
    with pytest.raises(stripe.InvalidRequestError) as failed:
        sdk.v1.refunds.create({"charge": declined.value.error.charge})
    assert failed.value.code == "charge_not_refundable"
    held = sdk.v1.payment_intents.create(pi_params(capture_method="manual"))
    assert held.status == "requires_capture" and held.amount_capturable == 1000
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.refunds.create({"payment_intent": held.id})
    captured = sdk.v1.payment_intents.capture(held.id, {"amount_to_capture": 600})
    assert captured.status == "succeeded" and captured.amount_received == 600
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.refunds.create({"payment_intent": held.id, "amount": 601})
    assert sdk.v1.refunds.create({"payment_intent": held.id}).amount == 600


def test_confirm_later_and_cancel(base: str) -> None:
    sdk = client(base)
    intent = sdk.v1.payment_intents.create({"amount": 500, "currency": "eur"})
    assert intent.status == "requires_payment_method"
    confirmed = sdk.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_mastercard"})
    assert confirmed.status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk.v1.payment_intents.cancel(intent.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    other = sdk.v1.payment_intents.create(pi_params(capture_method="manual"))
    canceled = sdk.v1.payment_intents.cancel(other.id, {"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and canceled.cancellation_reason == "abandoned"


def test_lists_page_newest_first_with_cursors(base: str) -> None:
    sdk = client(base)
    customer = sdk.v1.customers.create({"email": "pages@example.com", "metadata": {"t": "1"}})
    assert sdk.v1.customers.retrieve(customer.id).email == "pages@example.com"
    made = [
        sdk.v1.payment_intents.create(pi_params(amount=100 + i, customer=customer.id)).id for i in range(5)
    ]
    newest = list(reversed(made))
    page1 = sdk.v1.payment_intents.list({"customer": customer.id, "limit": 2})
    assert [i.id for i in page1.data] == newest[:2] and page1.has_more
    page2 = sdk.v1.payment_intents.list(
        {"customer": customer.id, "limit": 2, "starting_after": page1.data[-1].id}
    )
    assert [i.id for i in page2.data] == newest[2:4] and page2.has_more
    back = sdk.v1.payment_intents.list(
        {"customer": customer.id, "limit": 2, "ending_before": page2.data[0].id}
    )
    assert [i.id for i in back.data] == newest[:2]
    everything = sdk.v1.payment_intents.list({"customer": customer.id, "limit": 2}).auto_paging_iter()
    assert [i.id for i in everything] == newest
    charges = sdk.v1.charges.list({"customer": customer.id, "limit": 100})
    assert [c.payment_intent for c in charges.data] == newest and not charges.has_more
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.payment_intents.list({"limit": 101})
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.payment_intents.list({"starting_after": "pi_doesnotexist"})


def test_created_filters_combine(base: str) -> None:
    sdk = client(base)
    customer = sdk.v1.customers.create({})
    t0 = int(datetime(2031, 3, 1, tzinfo=UTC).timestamp())
    ids = []
    for i in range(4):
        control(base, "POST", "/_emulator/clock", {"now": t0 + 100 * i})
        ids.append(sdk.v1.payment_intents.create(pi_params(customer=customer.id)).latest_charge)
    window = sdk.v1.charges.list({"customer": customer.id, "created": {"gte": t0 + 100, "lt": t0 + 300}})
    assert [c.id for c in window.data] == [ids[2], ids[1]]
    after = sdk.v1.charges.list({"customer": customer.id, "created": {"gt": t0 + 100, "lte": t0 + 300}})
    assert [c.id for c in after.data] == [ids[3], ids[2]]
    exact = sdk.v1.charges.list({"customer": customer.id, "created": t0})
    assert [c.id for c in exact.data] == [ids[0]]
    by_day = sdk.v1.balance_transactions.list({"created": {"gte": t0, "lt": t0 + 86400}, "type": "charge"})
    assert len(by_day.data) == 4
    txn = by_day.data[0]
    assert (txn.fee, txn.net, txn.reporting_category, txn.status) == (59, 941, "charge", "pending")
    assert txn.available_on == t0 + 2 * 86400
    control(base, "POST", "/_emulator/clock", {"now": t0 + 3 * 86400})
    assert sdk.v1.balance_transactions.retrieve(txn.id).status == "available"


def test_search_by_metadata_and_status(base: str) -> None:
    sdk = client(base)
    order = uuid.uuid4().hex
    ok = sdk.v1.payment_intents.create(pi_params(metadata={"order": order}))
    with pytest.raises(stripe.CardError):
        sdk.v1.payment_intents.create(pi_params("pm_card_chargeDeclined", metadata={"order": order}))
    both = sdk.v1.payment_intents.search({"query": f"metadata['order']:'{order}'"})
    assert len(both.data) == 2
    succeeded = sdk.v1.payment_intents.search(
        {"query": f"metadata['order']:'{order}' AND status:'succeeded'"}
    )
    assert [i.id for i in succeeded.data] == [ok.id]
    paged = sdk.v1.payment_intents.search({"query": f"metadata['order']:'{order}'", "limit": 1})
    assert paged.has_more and len(list(paged.auto_paging_iter())) == 2
    assert sdk.v1.payment_intents.search({"query": "metadata['order']:'nothing-here'"}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.payment_intents.search({"query": "metadata['order']:'x' OR status:'succeeded'"})


def test_events_record_the_lifecycle(base: str) -> None:
    sdk = client(base)
    intent = sdk.v1.payment_intents.create(pi_params())
    sdk.v1.refunds.create({"payment_intent": intent.id, "amount": 100})
    now = int(time.time())
    recent: Any = {"gte": now - 60, "lte": now + 60}
    events = sdk.v1.events.list({"limit": 5, "created": recent})
    types = [e.type for e in events.data]
    assert types == [
        "charge.refunded",
        "refund.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "payment_intent.created",
    ]
    succeeded = sdk.v1.events.list({"type": "payment_intent.succeeded", "limit": 1, "created": recent}).data[
        0
    ]
    assert succeeded.data.object["id"] == intent.id
    assert sdk.v1.events.retrieve(succeeded.id).type == "payment_intent.succeeded"
    charge_events = sdk.v1.events.list({"type": "charge.*", "limit": 2, "created": recent})
    assert [e.type for e in charge_events.data] == ["charge.refunded", "charge.succeeded"]


def test_timeout_after_capture_commits_and_retry_returns_it(base: str) -> None:
    control(
        base,
        "POST",
        "/_emulator/faults",
        {"timeout_after_capture_rate": 1.0, "hold_ms": 2000, "only_paths": ["/v1/payment_intents"]},
    )
    k, payment_id = key(), uuid.uuid4().hex
    params = pi_params(metadata={"payray_payment_id": payment_id})
    started = time.monotonic()
    with pytest.raises(stripe.APIConnectionError):
        client(base, timeout=0.5).v1.payment_intents.create(params, options={"idempotency_key": k})
    assert time.monotonic() - started < 1.9
    control(base, "DELETE", "/_emulator/faults")
    sdk = client(base)
    found = sdk.v1.payment_intents.search({"query": f"metadata['payray_payment_id']:'{payment_id}'"})
    assert len(found.data) == 1 and found.data[0].status == "succeeded"
    retried = sdk.v1.payment_intents.create(params, options={"idempotency_key": k})
    assert retried.id == found.data[0].id
    assert (
        retried.last_response is not None and retried.last_response.headers["Idempotent-Replayed"] == "true"
    )
    assert captures_for(base, k) == 1
    injections = control(base, "GET", "/_emulator/injections?kind=timeout_after_commit")
    mine = [i for i in injections["data"] if i["idempotency_key"] == k]
    assert len(mine) == 1 and mine[0]["object_id"] == retried.id and mine[0]["path"] == "/v1/payment_intents"


def test_error_rate_503_and_stripe_should_retry(base: str) -> None:
    control(
        base,
        "POST",
        "/_emulator/faults",
        {"error_rate": 1.0, "error_status": 503, "only_paths": ["/v1/payment_intents"]},
    )
    with pytest.raises(stripe.APIError) as caught:
        client(base).v1.payment_intents.create(pi_params())
    assert caught.value.http_status == 503
    assert client(base).v1.customers.create({}).id.startswith("cus_")
    control(
        base, "POST", "/_emulator/faults", {"error_rate": 1.0, "error_status": 500, "should_retry": False}
    )
    before = control(base, "GET", "/_emulator/injections")["counts"].get("error", 0)
    with pytest.raises(stripe.APIError):
        client(base, retries=2).v1.payment_intents.create(pi_params())
    assert control(base, "GET", "/_emulator/injections")["counts"]["error"] == before + 1
    control(base, "POST", "/_emulator/faults", {"error_rate": 1.0, "error_status": 429})
    with pytest.raises(stripe.RateLimitError):
        client(base).v1.payment_intents.create(pi_params())


def test_sdk_retries_through_lost_replies_without_a_second_capture(base: str) -> None:
    control(
        base,
        "POST",
        "/_emulator/faults",
        {"reset_after_rate": 0.5, "seed": 3, "only_paths": ["/v1/payment_intents"]},
    )
    k = key()
    intent = client(base, retries=8).v1.payment_intents.create(pi_params(), options={"idempotency_key": k})
    assert intent.status == "succeeded"
    assert captures_for(base, k) == 1
    resets = control(base, "GET", "/_emulator/injections?kind=reset_after")["data"]
    assert [i["object_id"] for i in resets if i["idempotency_key"] == k] == [intent.id]


def test_outage_window(base: str) -> None:
    now = time.time()
    control(base, "POST", "/_emulator/faults", {"outages": [{"start": now - 1, "end": now + 60}]})
    with pytest.raises(stripe.APIError) as caught:
        client(base).v1.payment_intents.create(pi_params())
    assert caught.value.http_status == 503
    control(
        base, "POST", "/_emulator/faults", {"outages": [{"start": now - 1, "end": now + 60, "mode": "reset"}]}
    )
    with pytest.raises(stripe.APIConnectionError):
        client(base).v1.customers.create({})
    control(base, "POST", "/_emulator/faults", {"outages": [{"start": now - 60, "end": now - 30}]})
    assert client(base).v1.payment_intents.create(pi_params()).status == "succeeded"


def test_truncated_json_commits_but_garbles_the_reply(base: str) -> None:
    control(base, "POST", "/_emulator/faults", {"truncated_json_rate": 1.0, "only_paths": ["/v1/customers"]})
    k = key()
    with pytest.raises(stripe.APIError) as caught:
        client(base).v1.customers.create({"email": "cut@example.com"}, options={"idempotency_key": k})
    assert caught.value.http_status == 200
    control(base, "DELETE", "/_emulator/faults")
    customer = client(base).v1.customers.create({"email": "cut@example.com"}, options={"idempotency_key": k})
    assert (
        customer.last_response is not None and customer.last_response.headers["Idempotent-Replayed"] == "true"
    )


def test_wire_basics(base: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    missing = httpx.get(f"{base}/v1/nowhere", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.headers["Request-Id"].startswith("req_")
    assert httpx.get(f"{base}/not-even-v1").json()["error"]["message"].startswith("Unrecognized")
    assert httpx.get(f"{base}/v1/customers").status_code == 401
    basic = httpx.get(f"{base}/v1/customers", auth=(API_KEY, ""))
    assert basic.status_code == 200 and basic.json()["object"] == "list"
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("sk_live_nope", base_addresses={"api": base}).v1.customers.list()
    unknown = httpx.get(f"{base}/v1/payment_intents/pi_missing", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "resource_missing"
    bad = httpx.post(f"{base}/_emulator/faults", json={"error_rate": 7})
    assert bad.status_code == 400 and "error_rate" in bad.json()["error"]["message"]
    assert httpx.get(f"{base}/_emulator/faults").json()["error_rate"] == 0
    stats = control(base, "GET", "/_emulator/stats")
    assert stats["payment_intents"] >= 1 and stats["duplicate_capture_count"] == 0


def test_restart_keeps_objects_and_idempotency(tmp_path: Path) -> None:
    process = EmulatorProcess(tmp_path / "data")
    first = process.start()
    try:
        sdk, k = client(first), key()
        customer = sdk.v1.customers.create({"email": "durable@example.com"})
        intent = sdk.v1.payment_intents.create(
            pi_params(customer=customer.id), options={"idempotency_key": k}
        )
        refund = sdk.v1.refunds.create({"payment_intent": intent.id, "amount": 250})
    finally:
        process.stop()
    second = process.start()
    try:
        sdk = client(second)
        assert sdk.v1.customers.retrieve(customer.id).email == "durable@example.com"
        assert sdk.v1.refunds.retrieve(refund.id).amount == 250
        again = sdk.v1.payment_intents.create(pi_params(customer=customer.id), options={"idempotency_key": k})
        assert again.id == intent.id
        assert (
            again.last_response is not None and again.last_response.headers["Idempotent-Replayed"] == "true"
        )
        assert [i.id for i in sdk.v1.payment_intents.list({"customer": customer.id}).data] == [intent.id]
        assert captures_for(second, k) == 1
        control(second, "POST", "/_emulator/reset")
        assert client(second).v1.payment_intents.list().data == []
    finally:
        process.stop()
    with EmulatorProcess(tmp_path / "data") as third:
        assert third.url is not None
        assert control(third.url, "GET", "/_emulator/stats")["payment_intents"] == 0
