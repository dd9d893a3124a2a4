"""The emulator's Braintree personality driven by Braintree's own Python SDK over loopback HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import braintree
import httpx
import pytest
import requests
import stripe
from braintree.exceptions import (
    AuthenticationError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)

from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.emulator.server import EmulatorProcess
from tests.integration.emulator_control import control
from tests.integration.polling import until
from tests.integration.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

DAY_S = 86_400


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-emulator-braintree")) as process:
        yield process


@pytest.fixture
def base(emulator: EmulatorProcess) -> Iterator[str]:
    assert emulator.url is not None
    yield emulator.url
    control(emulator.url, "DELETE", "/_emulator/faults")
    control(emulator.url, "POST", "/_emulator/clock", {"now": None})
    control(emulator.url, "DELETE", "/_emulator/braintree/webhooks")


def gateway(
    base: str,
    *,
    merchant_id: str = DEFAULT_MERCHANT_ID,
    private_key: str = DEFAULT_PRIVATE_KEY,
    timeout: float = 5.0,
) -> braintree.BraintreeGateway:
    url = urlsplit(base)
    environment = braintree.Environment("emulator", url.hostname, str(url.port), "", False, None)
    config = braintree.Configuration(
        environment,
        merchant_id=merchant_id,
        public_key=DEFAULT_PUBLIC_KEY,
        private_key=private_key,
        timeout=timeout,
    )
    return braintree.BraintreeGateway(config)


def stripe_client(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_123",
        base_addresses={"api": base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=5),
    )


def stripe_charge_succeeds(base: str) -> None:
    params: Any = {
        "amount": 1000,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "payment_method_types": ["card"],
    }
    assert stripe_client(base).v1.payment_intents.create(params).status == "succeeded"


def order() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


def sale(gw: braintree.BraintreeGateway, amount: str = "10.00", **extra: Any) -> Any:
    params = {"amount": amount, "payment_method_nonce": "fake-valid-nonce", **extra}
    return gw.transaction.sale(params)


def codes(result: Any) -> list[str]:
    return [error.code for error in result.errors.deep_errors]


def advance_days(base: str, days: int) -> None:
    control(base, "POST", "/_emulator/clock", {"now": time.time() + days * DAY_S, "frozen": True})


def transaction_count(base: str) -> int:
    count: int = control(base, "GET", "/_emulator/braintree/stats")["transaction"]
    return count


# -- transactions ------


def test_sale_authorizes_only_unless_submitted_for_settlement(base: str) -> None:
    gw = gateway(base)
    authorized = sale(gw, order_id=order())
    assert authorized.is_success and authorized.transaction.status == "authorized"
    assert authorized.transaction.type == "sale" and str(authorized.transaction.amount) == "10.00"
    assert authorized.transaction.processor_response_code == "1000"
    assert authorized.transaction.credit_card_details.card_type == "Visa"
    captured = sale(gw, options={"submit_for_settlement": True})
    assert captured.is_success and captured.transaction.status == "submitted_for_settlement"
    statuses = [event.status for event in captured.transaction.status_history]
    assert statuses == ["authorized", "submitted_for_settlement"]


def test_submit_for_settlement_in_full_and_in_part(base: str) -> None:
    gw = gateway(base)
    full = gw.transaction.submit_for_settlement(sale(gw, "12.00").transaction.id)
    assert full.is_success and full.transaction.status == "submitted_for_settlement"
    assert str(full.transaction.amount) == "12.00"
    partial = gw.transaction.submit_for_settlement(sale(gw, "12.00").transaction.id, "7.50")
    assert partial.is_success and str(partial.transaction.amount) == "7.50"
    again = gw.transaction.submit_for_settlement(partial.transaction.id)
    assert not again.is_success and codes(again) == ["91507"]
    too_much = gw.transaction.submit_for_settlement(sale(gw, "5.00").transaction.id, "5.01")
    assert not too_much.is_success and codes(too_much) == ["91522"]


def test_void_before_settlement_and_not_after(base: str) -> None:
    gw = gateway(base)
    authorized = sale(gw).transaction
    voided = gw.transaction.void(authorized.id)
    assert voided.is_success and voided.transaction.status == "voided"
    submitted = sale(gw, options={"submit_for_settlement": True}).transaction
    assert gw.transaction.void(submitted.id).transaction.status == "voided"
    again = gw.transaction.void(authorized.id)
    assert not again.is_success and codes(again) == ["91504"]


def test_refund_before_settlement_is_refused_so_callers_void(base: str) -> None:
    gw = gateway(base)
    choices: list[dict[str, Any]] = [{}, {"options": {"submit_for_settlement": True}}]
    for options in choices:
        txn = sale(gw, **options).transaction
        refused = gw.transaction.refund(txn.id)
        assert not refused.is_success
        assert refused.errors.for_object("transaction").on("base")[0].code == "91506"
        assert gw.transaction.find(txn.id).refund_ids == []


def test_the_clock_settles_a_batch_then_refunds_full_and_partial(base: str) -> None:
    gw = gateway(base)
    whole = sale(gw, "20.00", options={"submit_for_settlement": True}).transaction
    parted = sale(gw, "30.00", options={"submit_for_settlement": True}).transaction
    advance_days(base, 1)
    settled = gw.transaction.find(whole.id)
    assert settled.status == "settled" and settled.settlement_batch_id
    full = gw.transaction.refund(whole.id)
    assert full.is_success and full.transaction.type == "credit"
    assert full.transaction.refunded_transaction_id == whole.id and str(full.transaction.amount) == "20.00"
    assert full.transaction.status == "submitted_for_settlement"
    assert codes(gw.transaction.refund(whole.id, "1.00")) == ["91512"]
    first = gw.transaction.refund(parted.id, "10.00")
    assert first.is_success and str(first.transaction.amount) == "10.00"
    assert codes(gw.transaction.refund(parted.id, "20.01")) == ["91521"]
    rest = gw.transaction.refund(parted.id)
    assert rest.is_success and str(rest.transaction.amount) == "20.00"
    assert gw.transaction.find(parted.id).refund_ids == [first.transaction.id, rest.transaction.id]


def test_find_and_search_by_order_id(base: str) -> None:
    gw = gateway(base)
    order_id = order()
    first = sale(gw, order_id=order_id).transaction
    second = sale(gw, "11.00", order_id=order_id, options={"submit_for_settlement": True}).transaction
    sale(gw, order_id=order())
    found = gw.transaction.find(first.id)
    assert found.id == first.id and found.order_id == order_id
    results = gw.transaction.search(braintree.TransactionSearch.order_id == order_id)
    assert sorted(results.ids) == sorted([first.id, second.id])
    assert {t.id: t.status for t in results.items} == {
        first.id: "authorized",
        second.id: "submitted_for_settlement",
    }
    submitted = gw.transaction.search(
        braintree.TransactionSearch.order_id == order_id,
        braintree.TransactionSearch.status.in_list([braintree.Transaction.Status.SubmittedForSettlement]),
    )
    assert submitted.ids == [second.id]
    with pytest.raises(NotFoundError):
        gw.transaction.find("missing1")


@pytest.mark.parametrize(
    ("method", "status", "code"),
    [
        ("fake-processor-declined-visa-nonce", "processor_declined", "2000"),
        ("pm_card_chargeDeclinedInsufficientFunds", "processor_declined", "2001"),
        ("fake-processor-failure-jcb-nonce", "failed", "3000"),
    ],
)
def test_a_decline_carries_its_transaction(base: str, method: str, status: str, code: str) -> None:
    result = gateway(base).transaction.sale({"amount": "10.00", "payment_method_nonce": method})
    assert not result.is_success and result.transaction is not None
    assert result.transaction.status == status and result.transaction.processor_response_code == code
    assert result.message == result.transaction.processor_response_text


def test_stripe_test_ids_and_braintree_nonces_pay_with_the_same_cards(base: str) -> None:
    gw = gateway(base)
    by_id = gw.transaction.sale({"amount": "10.00", "payment_method_nonce": "pm_card_visa"}).transaction
    by_nonce = sale(gw).transaction
    assert by_id.credit_card_details.last_4 == by_nonce.credit_card_details.last_4 == "4242"
    rejected = gw.transaction.sale(
        {"amount": "1.00", "payment_method_nonce": "fake-gateway-rejected-fraud-nonce"}
    )
    assert rejected.transaction.status == "gateway_rejected"
    assert rejected.transaction.gateway_rejection_reason == "fraud"
    unknown = gw.transaction.sale({"amount": "1.00", "payment_method_nonce": "no-such-nonce"})
    assert codes(unknown) == ["91565"]


# -- api_request_key ------


def test_the_same_api_request_key_returns_the_same_transaction(base: str) -> None:
    gw = gateway(base)
    key = uuid.uuid4().hex
    first = sale(gw, api_request_key=key, options={"submit_for_settlement": True})
    count = transaction_count(base)
    again = sale(gw, api_request_key=key, options={"submit_for_settlement": True})
    assert again.is_success and again.transaction.id == first.transaction.id
    assert transaction_count(base) == count
    other = sale(gw, "10.01", api_request_key=key, options={"submit_for_settlement": True})
    assert not other.is_success and other.transaction is None
    assert other.errors.for_object("transaction").on("api_request_key")[0].code == "915232"
    assert transaction_count(base) == count


def test_a_retried_capture_with_its_key_is_answered_not_refused(base: str) -> None:
    gw = gateway(base)
    txn = sale(gw).transaction
    key = uuid.uuid4().hex
    first = gw.transaction.submit_for_settlement(txn.id, None, {"api_request_key": key})
    retried = gw.transaction.submit_for_settlement(txn.id, None, {"api_request_key": key})
    assert first.is_success and retried.is_success
    assert retried.transaction.status == "submitted_for_settlement"


# -- webhooks ------


def _notifications(gw: braintree.BraintreeGateway, base: str, receiver: Receiver, count: int) -> list[Any]:
    def arrived() -> bool:
        control(base, "POST", "/_emulator/braintree/webhooks/flush")
        return len(receiver.received) >= count

    until(arrived, timeout_s=10, what=f"{count} webhooks")
    parsed = []
    for received in receiver.received:
        form = parse_qs(received.body.decode())
        parsed.append(gw.webhook_notification.parse(form["bt_signature"][0], form["bt_payload"][0]))
    return parsed


def test_webhooks_are_signed_as_braintree_signs_them(base: str, receivers: Any) -> None:
    gw = gateway(base)
    receiver = receivers()
    control(base, "POST", "/_emulator/braintree/webhooks", {"url": receiver.url})
    settled = sale(gw, options={"submit_for_settlement": True}).transaction
    declined = sale(gw, options={"submit_for_settlement": True}).transaction
    assert gw.testing.settle_transaction(settled.id).transaction.status == "settled"
    assert gw.testing.settlement_decline_transaction(declined.id).transaction.status == "settlement_declined"
    control(base, "POST", "/_emulator/braintree/disputes", {"transaction_id": settled.id, "amount": "4.00"})
    notes = _notifications(gw, base, receiver, 3)
    by_kind = {note.kind: note for note in notes}
    assert set(by_kind) == {"transaction_settled", "transaction_settlement_declined", "dispute_opened"}
    assert by_kind["transaction_settled"].transaction.id == settled.id
    assert by_kind["transaction_settlement_declined"].transaction.status == "settlement_declined"
    dispute = by_kind["dispute_opened"].dispute
    assert dispute.transaction.id == settled.id and str(dispute.amount) == "4.00"


def test_a_batch_the_clock_closes_announces_transaction_settled(base: str, receivers: Any) -> None:
    gw = gateway(base)
    receiver = receivers()
    control(base, "POST", "/_emulator/braintree/webhooks", {"url": receiver.url})
    txn = sale(gw, options={"submit_for_settlement": True}).transaction
    advance_days(base, 1)
    notes = [n for n in _notifications(gw, base, receiver, 1) if n.transaction.id == txn.id]
    assert [n.kind for n in notes] == ["transaction_settled"]


def test_a_forged_payload_does_not_parse(base: str, receivers: Any) -> None:
    gw = gateway(base)
    receiver = receivers()
    control(base, "POST", "/_emulator/braintree/webhooks", {"url": receiver.url})
    gw.testing.settle_transaction(sale(gw, options={"submit_for_settlement": True}).transaction.id)
    _notifications(gw, base, receiver, 1)
    form = parse_qs(receiver.received[0].body.decode())
    stranger = gateway(base, private_key="another_private_key")
    with pytest.raises(braintree.exceptions.InvalidSignatureError):
        stranger.webhook_notification.parse(form["bt_signature"][0], form["bt_payload"][0])


# -- settlement ------


def test_settlement_batch_summary_and_report_name_what_settled(base: str) -> None:
    gw = gateway(base)
    day = datetime.now(UTC).date() + timedelta(days=40)
    start = datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp()
    control(base, "POST", "/_emulator/clock", {"now": start})
    kept = sale(gw, "25.00", options={"submit_for_settlement": True}).transaction
    sale(gw, "5.00", options={"submit_for_settlement": True})
    voided = sale(gw, "9.00", options={"submit_for_settlement": True}).transaction
    gw.transaction.void(voided.id)
    control(base, "POST", "/_emulator/clock", {"now": start + DAY_S})
    refund = gw.transaction.refund(kept.id, "5.00").transaction
    control(base, "POST", "/_emulator/clock", {"now": start + 2 * DAY_S})
    summary = gw.settlement_batch_summary.generate(day.isoformat())
    assert summary.is_success
    assert summary.settlement_batch_summary.records == [
        {
            "card_type": "Visa",
            "merchant_account_id": DEFAULT_MERCHANT_ID,
            "kind": "sale",
            "count": "2",
            "amount_settled": "30.00",
        }
    ]
    next_day = (day + timedelta(days=1)).isoformat()
    credits = gw.settlement_batch_summary.generate(next_day).settlement_batch_summary.records
    assert [(r["kind"], r["amount_settled"]) for r in credits] == [("credit", "-5.00")]
    report = httpx.get(f"{base}/_emulator/braintree/settlement_report", params={"date": day.isoformat()})
    lines = report.text.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert sorted((r["reporting_category"], r["gross"]) for r in rows) == [
        ("charge", "25.00"),
        ("charge", "5.00"),
    ]
    kept_row = next(r for r in rows if r["source_id"] == kept.id)
    assert kept_row["reporting_category"] == "charge" and kept_row["created_utc"].startswith(day.isoformat())
    refunds = httpx.get(f"{base}/_emulator/braintree/settlement_report", params={"date": next_day}).text
    assert f"{refund.id},{next_day}" in refunds and ",refund,usd,-5.00,0.00,-5.00," in refunds
    invalid = gw.settlement_batch_summary.generate("not-a-date")
    assert not invalid.is_success and codes(invalid) == ["82302"]


# -- bad input ------


def test_bad_credentials_and_unknown_merchants_change_nothing(base: str) -> None:
    count = transaction_count(base)
    for gw in (gateway(base, merchant_id="nobody"), gateway(base, private_key="wrong_private_key")):
        with pytest.raises(AuthenticationError):
            sale(gw)
    malformed = httpx.post(
        f"{base}/merchants/{DEFAULT_MERCHANT_ID}/transactions",
        content=b"<transaction><amount>10.00</amount>",
        auth=(DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY),
        headers={"Content-Type": "application/xml", "X-ApiVersion": "6"},
    )
    assert malformed.status_code == 400
    invalid = sale(gateway(base), "ten dollars")
    assert invalid.errors.for_object("transaction").on("amount")[0].code == "81503"
    assert transaction_count(base) == count


# -- faults, per PSP ------


def _only_braintree(base: str, **faults: Any) -> None:
    control(base, "POST", "/_emulator/faults", {"psp": "braintree", **faults})


def test_errors_aimed_at_braintree_leave_stripe_alone(base: str) -> None:
    _only_braintree(base, error_rate=1.0, error_status=500)
    with pytest.raises(ServerError):
        sale(gateway(base))
    stripe_charge_succeeds(base)
    _only_braintree(base, error_rate=1.0, error_status=503)
    with pytest.raises(ServiceUnavailableError):
        sale(gateway(base))
    stripe_charge_succeeds(base)
    record = httpx.get(f"{base}/_emulator/injections", params={"psp": "braintree"}).json()
    assert record["counts"] == {"error": 2}
    assert httpx.get(f"{base}/_emulator/injections").json()["counts"] == {}


def test_latency_aimed_at_braintree_leaves_stripe_alone(base: str) -> None:
    _only_braintree(base, latency_ms={"dist": "fixed", "ms": 400})
    started = time.monotonic()
    assert sale(gateway(base)).is_success
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    stripe_charge_succeeds(base)
    assert time.monotonic() - started < 0.4


def test_a_timeout_after_capture_keeps_the_transaction(base: str) -> None:
    _only_braintree(base, timeout_after_capture_rate=1.0, hold_ms=3000)
    order_id = order()
    with pytest.raises(requests.exceptions.ReadTimeout):
        sale(gateway(base, timeout=1.0), order_id=order_id, options={"submit_for_settlement": True})
    stripe_charge_succeeds(base)
    control(base, "DELETE", "/_emulator/faults")
    found = list(gateway(base).transaction.search(braintree.TransactionSearch.order_id == order_id).items)
    assert [t.status for t in found] == ["submitted_for_settlement"]


def test_an_outage_aimed_at_braintree_leaves_stripe_alone(base: str) -> None:
    now = time.time()
    _only_braintree(base, outages=[{"start": now - 1, "end": now + 60, "mode": "reset"}])
    with pytest.raises(requests.exceptions.ConnectionError):
        sale(gateway(base))
    stripe_charge_succeeds(base)
    assert httpx.get(f"{base}/_emulator/faults", params={"psp": "stripe"}).json()["outages"] == []


def test_faults_without_a_psp_reach_both(base: str) -> None:
    control(base, "POST", "/_emulator/faults", {"error_rate": 1.0, "error_status": 503})
    with pytest.raises(ServiceUnavailableError):
        sale(gateway(base))
    with pytest.raises(stripe.APIError):
        stripe_charge_succeeds(base)


# -- persistence ------


def test_a_restart_keeps_transactions_and_keys(tmp_path: Path) -> None:
    key = uuid.uuid4().hex
    with EmulatorProcess(tmp_path) as first:
        assert first.url is not None
        txn = sale(gateway(first.url), api_request_key=key, order_id="kept").transaction
    with EmulatorProcess(tmp_path) as second:
        assert second.url is not None
        gw = gateway(second.url)
        assert gw.transaction.find(txn.id).order_id == "kept"
        assert sale(gw, api_request_key=key, order_id="kept").transaction.id == txn.id
