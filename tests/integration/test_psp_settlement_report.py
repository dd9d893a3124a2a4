"""The settlement report over HTTP: report runs created and polled with the real stripe SDK, the CSV
downloaded from the run's file URL, settlement drift and bulk seeding through the control routes."""

from __future__ import annotations

import csv
import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe

from payray.money import Money
from psp.emulator.server import EmulatorProcess
from psp.emulator.synthetic import synthetic_day
from tests.integration.polling import until

pytestmark = pytest.mark.integration

API_KEY = "sk_test_settlement"
REPORT_TYPE = "balance_change_from_activity.itemized.3"
DAY = date(2030, 1, 15)
MIDNIGHT = int(datetime(2030, 1, 15, tzinfo=UTC).timestamp())
NOON = MIDNIGHT + 12 * 3600
Row = dict[str, str]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-settlement")) as process:
        yield process


@pytest.fixture
def base(emulator: EmulatorProcess) -> Iterator[str]:
    assert emulator.url is not None
    control(emulator.url, "POST", "/_emulator/reset")
    yield emulator.url
    control(emulator.url, "POST", "/_emulator/reset")


def control(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.request(method, base + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def sdk(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY, base_addresses={"api": base}, http_client=stripe.RequestsClient(timeout=30)
    )


def at(base: str, ts: int) -> None:
    control(base, "POST", "/_emulator/clock", {"now": ts, "frozen": True})


def pay(client: stripe.StripeClient, amount: int, payment_id: str, currency: str = "usd") -> stripe.Charge:
    params: Any = {
        "amount": amount,
        "currency": currency,
        "payment_method": "pm_card_visa",
        "confirm": True,
        "payment_method_types": ["card"],
        "metadata": {"payray_payment_id": payment_id},
    }
    intent = client.v1.payment_intents.create(params)
    assert isinstance(intent.latest_charge, str)
    return client.v1.charges.retrieve(intent.latest_charge)


def run_report(client: stripe.StripeClient, start: int = MIDNIGHT, days: int = 1, **extra: Any) -> Any:
    """Create a run, check it starts pending, poll until it is done."""
    params: Any = {
        "report_type": REPORT_TYPE,
        "parameters": {"interval_start": start, "interval_end": start + days * 86_400, **extra},
    }
    run = client.v1.reporting.report_runs.create(params)
    assert run.object == "reporting.report_run" and run.status == "pending" and run.result is None
    run = until(
        lambda: (done := client.v1.reporting.report_runs.retrieve(run.id)).status != "pending" and done,
        60,
        "the report run's end",
    )
    assert run.status == "succeeded", run.error
    return run


def download(url: str) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode("utf-8"), response.headers["Content-Type"]


def report(client: stripe.StripeClient, start: int = MIDNIGHT, days: int = 1) -> list[Row]:
    run = run_report(client, start, days)
    text, _ = download(run.result.url)
    return list(csv.DictReader(io.StringIO(text)))


def test_a_report_run_lists_the_day_with_refunds_and_disputes(base: str) -> None:
    client = sdk(base)
    at(base, MIDNIGHT - 10)
    pay(client, 999, "pay_yesterday")
    at(base, NOON)
    first = pay(client, 1000, "pay_1")
    second = pay(client, 2500, "pay_2", currency="eur")
    at(base, NOON + 60)
    refund = client.v1.refunds.create(
        {"charge": first.id, "amount": 300, "metadata": {"payray_refund_id": "rf_1"}}
    )
    at(base, NOON + 120)
    dispute = control(base, "POST", "/_emulator/disputes", {"charge": second.id, "amount": 2000})
    at(base, NOON + 180)
    control(base, "POST", f"/_emulator/disputes/{dispute['id']}/close", {"status": "won"})
    at(base, MIDNIGHT + 86_400 + 5)
    pay(client, 777, "pay_tomorrow")

    run = run_report(client)
    assert run.id.startswith("frr_") and run.report_type == REPORT_TYPE and run.livemode is False
    assert run.parameters.interval_start == MIDNIGHT and run.parameters.interval_end == MIDNIGHT + 86_400
    assert run.parameters.timezone == "Etc/UTC" and run.parameters.columns is not None
    assert run.parameters.columns[0] == "balance_transaction_id" and len(run.parameters.columns) == 14
    file = run.result
    assert file.object == "file" and file.purpose == "finance_report_run" and file.type == "csv"
    assert file.filename == f"{run.id}.csv" and file.url == f"{base}/v1/files/{file.id}/contents"
    assert run.succeeded_at == MIDNIGHT + 86_400 + 5
    assert client.v1.files.retrieve(file.id).size == file.size

    text, content_type = download(file.url)
    assert content_type.startswith("text/csv") and len(text.encode()) == file.size
    assert text.splitlines()[0] == (
        "balance_transaction_id,created_utc,available_on_utc,reporting_category,currency,gross,fee,net,"
        "source_id,charge_id,payment_intent_id,description,payment_metadata[payray_payment_id],"
        "refund_metadata[payray_refund_id]"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [
        (r["reporting_category"], r["currency"], r["gross"], r["fee"], r["net"], r["created_utc"])
        for r in rows
    ] == [
        ("charge", "usd", "10.00", "0.59", "9.41", "2030-01-15 12:00:00"),
        ("charge", "eur", "25.00", "0.98", "24.02", "2030-01-15 12:00:00"),
        ("refund", "usd", "-3.00", "0.00", "-3.00", "2030-01-15 12:01:00"),
        ("dispute", "eur", "-20.00", "0.00", "-20.00", "2030-01-15 12:02:00"),
        ("dispute_reversal", "eur", "20.00", "0.00", "20.00", "2030-01-15 12:03:00"),
    ]
    assert [r["source_id"] for r in rows] == [first.id, second.id, refund.id, dispute["id"], dispute["id"]]
    assert [r["charge_id"] for r in rows] == [first.id, second.id, first.id, second.id, second.id]
    assert [r["payment_intent_id"] for r in rows] == [
        first.payment_intent,
        second.payment_intent,
        first.payment_intent,
        second.payment_intent,
        second.payment_intent,
    ]
    payment_ids = [r["payment_metadata[payray_payment_id]"] for r in rows]
    assert payment_ids == ["pay_1", "pay_2", "pay_1", "pay_2", "pay_2"]
    assert [r["refund_metadata[payray_refund_id]"] for r in rows] == ["", "", "rf_1", "", ""]
    assert {r["available_on_utc"] for r in rows} == {"2030-01-17 00:00:00"}
    assert rows[0]["balance_transaction_id"] == first.balance_transaction


def test_columns_are_picked_in_the_order_given(base: str) -> None:
    client = sdk(base)
    at(base, NOON)
    charge = pay(client, 1234, "pay_c")
    run = run_report(client, columns=["gross", "balance_transaction_id", "currency"], timezone="UTC")
    assert run.parameters.columns == ["gross", "balance_transaction_id", "currency"]
    assert run.parameters.timezone == "UTC"
    text, _ = download(run.result.url)
    assert text == f"gross,balance_transaction_id,currency\n12.34,{charge.balance_transaction},usd\n"


def test_settlement_drift_changes_exactly_the_injected_rows(base: str) -> None:
    client = sdk(base)
    for n in range(10):
        at(base, NOON + 60 * n)
        charge = pay(client, 1000 + n, f"pay_{n}", currency="usd" if n % 2 else "eur")
        if n < 4:
            client.v1.refunds.create({"charge": charge.id, "amount": 100})
    clean = report(client)
    body = {
        "date": "2030-01-15",
        "missing_capture": 1,
        "amount_mismatch": 2,
        "currency_mismatch": 1,
        "late_settlement": 1,
        "unknown_row": 1,
        "seed": 11,
    }
    injected = control(base, "POST", "/_emulator/settlement/drift", body)
    assert injected["date"] == "2030-01-15" and len(injected["injections"]) == 6
    assert control(base, "GET", "/_emulator/settlement/drift?date=2030-01-15") == {
        "injections": injected["injections"]
    }
    assert control(base, "GET", "/_emulator/settlement/drift?date=2030-01-16") == {"injections": []}
    assert control(base, "POST", "/_emulator/settlement/drift", body) == injected  # the seed decides
    by_kind = {i["kind"]: i for i in injected["injections"]}
    for inj in injected["injections"]:
        assert set(inj) == {
            "kind",
            "date",
            "balance_transaction",
            "reporting_category",
            "source_id",
            "charge_id",
            "payment_intent_id",
            "reference",
            "detail",
        }
        expected_reference = (
            inj["source_id"] if inj["reporting_category"] == "refund" else inj["payment_intent_id"]
        )
        assert inj["reference"] == expected_reference

    drifted = report(client)
    clean_by_id = {r["balance_transaction_id"]: r for r in clean}
    drifted_by_id = {r["balance_transaction_id"]: r for r in drifted}
    missing = by_kind["missing_capture"]["balance_transaction"]
    late = by_kind["late_settlement"]["balance_transaction"]
    unknown = by_kind["unknown_row"]
    assert set(clean_by_id) - set(drifted_by_id) == {missing, late}
    assert set(drifted_by_id) - set(clean_by_id) == {unknown["balance_transaction"]}
    changed = {i for i in clean_by_id if i in drifted_by_id and clean_by_id[i] != drifted_by_id[i]}
    assert changed == {
        i["balance_transaction"]
        for i in injected["injections"]
        if i["kind"] in ("amount_mismatch", "currency_mismatch")
    }
    for inj in injected["injections"]:
        row = drifted_by_id.get(inj["balance_transaction"])
        if inj["kind"] == "amount_mismatch":
            assert row is not None
            old, new = inj["detail"]["gross"]
            currency = row["currency"]
            assert clean_by_id[inj["balance_transaction"]]["gross"] == str(Money(old, currency).to_decimal())
            assert row["gross"] == str(Money(new, currency).to_decimal()) and 1 <= abs(new) - abs(old) <= 500
        if inj["kind"] == "currency_mismatch":
            assert (
                row is not None
                and [clean_by_id[inj["balance_transaction"]]["currency"], row["currency"]]
                == (inj["detail"]["currency"])
            )
    extra = drifted_by_id[unknown["balance_transaction"]]
    assert extra["charge_id"] == unknown["charge_id"] and extra["payment_intent_id"] == unknown["reference"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.charges.retrieve(unknown["charge_id"])

    [moved] = report(client, MIDNIGHT + 86_400)
    assert moved["balance_transaction_id"] == late
    assert moved["created_utc"] == "2030-01-16" + clean_by_id[late]["created_utc"][10:]
    assert by_kind["late_settlement"]["detail"] == {"settles_on": "2030-01-16"}

    assert control(base, "DELETE", "/_emulator/settlement/drift") == {"injections": []}
    assert report(client) == clean


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"date": "2030-01-15", "missing_capture": -1}, "missing_capture"),
        ({"date": "15/01/2030"}, "date"),
        ({"date": "2030-01-15", "color": "red"}, "color"),
        ({"date": "2030-01-15", "missing_capture": 3}, "has only 2 charge rows"),
        ({"date": "2030-01-15", "late_settlement": 2, "missing_capture": 1}, "only 1 charge or refund rows"),
    ],
)
def test_bad_drift_is_a_400(base: str, body: dict[str, Any], message: str) -> None:
    client = sdk(base)
    at(base, NOON)
    pay(client, 1000, "a")
    pay(client, 1000, "b")
    response = httpx.post(f"{base}/_emulator/settlement/drift", json=body)
    assert response.status_code == 400 and message in response.json()["error"]["message"]
    assert httpx.get(f"{base}/_emulator/settlement/drift", params={"date": "tomorrow"}).status_code == 400


def test_unknown_ids_are_stripe_404s(base: str) -> None:
    client = sdk(base)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.reporting.report_runs.retrieve("frr_missing")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for path in ("/v1/files/file_missing", "/v1/files/file_missing/contents"):
        response = httpx.get(base + path, headers=headers)
        assert response.status_code == 404 and response.json()["error"]["code"] == "resource_missing"
        assert response.headers["Request-Id"].startswith("req_")
    at(base, NOON)
    pay(client, 1000, "a")
    url = run_report(client).result.url
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"report_type": "balance.summary.1"}, "report_type"),
        ({"parameters": {"interval_start": MIDNIGHT + 60}}, "parameters[interval_start]"),
        ({"parameters": {"interval_end": MIDNIGHT + 3600}}, "parameters[interval_end]"),
        ({"parameters": {"columns": ["gross", "flavour"]}}, "parameters[columns]"),
        ({"parameters": {"timezone": "America/New_York"}}, "parameters[timezone]"),
    ],
)
def test_bad_report_parameters_are_a_400(base: str, params: dict[str, Any], param: str) -> None:
    body: Any = {
        "report_type": REPORT_TYPE,
        **params,
        "parameters": {
            "interval_start": MIDNIGHT,
            "interval_end": MIDNIGHT + 86_400,
            **params.get("parameters", {}),
        },
    }
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk(base).v1.reporting.report_runs.create(body)
    assert caught.value.http_status == 400 and caught.value.param == param


def test_faults_apply_to_report_routes(base: str) -> None:
    control(base, "POST", "/_emulator/faults", {"error_rate": 1.0, "only_paths": ["/v1/reporting"]})
    try:
        with pytest.raises(stripe.APIError) as caught:
            run_report(stripe.StripeClient(API_KEY, base_addresses={"api": base}, max_network_retries=0))
        assert caught.value.http_status == 503
    finally:
        control(base, "DELETE", "/_emulator/faults")


def test_bulk_seed_is_reported(base: str) -> None:
    seeded = control(
        base, "POST", "/_emulator/settlement/seed", {"date": "2030-02-01", "charges": 2000, "prefix": "it1"}
    )
    assert (seeded["charges"], seeded["refunds"], seeded["balance_transactions"]) == (2000, 200, 2200)
    again = httpx.post(
        f"{base}/_emulator/settlement/seed", json={"date": "2030-02-02", "charges": 10, "prefix": "it1"}
    )
    assert again.status_code == 400 and "prefix" in again.json()["error"]["message"]
    for bad in (
        {"date": "2030-02-01", "charges": 2_000_001, "prefix": "x"},
        {"date": "2030-02-01", "charges": 1, "prefix": "Bad!"},
    ):
        assert httpx.post(f"{base}/_emulator/settlement/seed", json=bad).status_code == 400
    start = int(datetime(2030, 2, 1, tzinfo=UTC).timestamp())
    rows = report(sdk(base), start)
    assert len(rows) == 2200
    by_id = {r["balance_transaction_id"]: r for r in rows}
    for c in synthetic_day(date(2030, 2, 1), 2000, "it1"):
        row = by_id[c.charge_txn_id]
        assert row["payment_metadata[payray_payment_id]"] == c.payment_id and row["charge_id"] == c.charge_id
        if c.refund_txn_id is not None:
            assert by_id[c.refund_txn_id]["source_id"] == c.refund_id
    charge = sdk(base).v1.charges.retrieve("ch_it1000000007")
    assert charge.amount == next(c.amount for c in synthetic_day(date(2030, 2, 1), 8, "it1") if c.index == 7)


def test_reset_forgets_runs_and_drift(base: str) -> None:
    client = sdk(base)
    at(base, NOON)
    pay(client, 1000, "a")
    run = run_report(client)
    control(base, "POST", "/_emulator/settlement/drift", {"date": "2030-01-15", "missing_capture": 1})
    control(base, "POST", "/_emulator/reset")
    assert control(base, "GET", "/_emulator/settlement/drift") == {"injections": []}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.reporting.report_runs.retrieve(run.id)


def test_runs_and_files_survive_a_restart(tmp_path: Path) -> None:
    with EmulatorProcess(tmp_path, api_key=API_KEY) as first:
        assert first.url is not None
        at(first.url, NOON)
        pay(sdk(first.url), 1000, "a")
        run = run_report(sdk(first.url))
        text, _ = download(run.result.url)
    assert (tmp_path / "reports" / f"{run.id}.csv").is_file()
    with EmulatorProcess(tmp_path, api_key=API_KEY) as second:
        assert second.url is not None
        again = sdk(second.url).v1.reporting.report_runs.retrieve(run.id)
        assert again.status == "succeeded" and again.result is not None and again.result.url is not None
        assert again.result.id == run.result.id
        assert download(again.result.url) == (text, "text/csv; charset=utf-8")
