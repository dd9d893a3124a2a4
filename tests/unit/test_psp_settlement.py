"""The emulator's daily settlement report without HTTP: CSV contract, dispute rows, drift and bulk seeding."""

from __future__ import annotations

import asyncio
import csv
import io
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from psp.emulator import synthetic
from psp.emulator.balance import processing_fee
from psp.emulator.clock import Clock
from psp.emulator.drift import DriftRequest, Injection, SettlementDrift
from psp.emulator.engine import Engine, RequestContext
from psp.emulator.errors import StripeError
from psp.emulator.pagination import PageRequest
from psp.emulator.reports import ReportRuns, parse_parameters
from psp.emulator.settlement import COLUMNS, Plan, days_between, major, write_report
from psp.emulator.store import Journal, Store

DAY = date(2030, 1, 15)
T0 = int(datetime(2030, 1, 15, 12, tzinfo=UTC).timestamp())
MIDNIGHT = int(datetime(2030, 1, 15, tzinfo=UTC).timestamp())
HEADER = (
    "balance_transaction_id,created_utc,available_on_utc,reporting_category,currency,gross,fee,net,"
    "source_id,charge_id,payment_intent_id,description,payment_metadata[payray_payment_id],"
    "refund_metadata[payray_refund_id]"
)
Row = dict[str, str]


def _engine(store: Store | None = None) -> Engine:
    clock = Clock()
    clock.set(T0)
    return Engine(store or Store(), clock)


def _pay(engine: Engine, amount: int = 1000, currency: str = "usd", payment_id: str = "") -> dict[str, Any]:
    params: dict[str, Any] = {
        "amount": str(amount),
        "currency": currency,
        "payment_method": "pm_card_visa",
        "confirm": "true",
    }
    if payment_id:
        params["metadata"] = {"payray_payment_id": payment_id}
    intent = engine.create_payment_intent(params, RequestContext())
    charge = engine.store.get("charge", intent["latest_charge"])
    assert charge is not None
    return charge


def _refund(engine: Engine, charge_id: str, amount: int, refund_id: str = "") -> dict[str, Any]:
    params: dict[str, Any] = {"charge": charge_id, "amount": str(amount)}
    if refund_id:
        params["metadata"] = {"payray_refund_id": refund_id}
    return engine.create_refund(params, RequestContext())


def _text(store: Store, days: list[date], drift: SettlementDrift | None, tmp_path: Path, **kw: Any) -> str:
    ids = [i for d in days for i in store.balance_transaction_ids_on(d, "created")]
    plan = drift.plan(days) if drift is not None else Plan()
    path = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.csv"
    size = write_report(store, ids, plan, kw.get("columns", COLUMNS), path)
    data = path.read_bytes()
    assert len(data) == size
    return data.decode("utf-8")


def _rows(store: Store, day: date, tmp_path: Path, drift: SettlementDrift | None = None) -> list[Row]:
    return list(csv.DictReader(io.StringIO(_text(store, [day], drift, tmp_path))))


def _busy_day(charges: int = 8, refunds: int = 3) -> Engine:
    """Charges a minute apart from noon, the first ``refunds`` of them partly refunded an hour later."""
    engine = _engine()
    made = []
    for n in range(charges):
        engine.clock.set(T0 + 60 * n)
        made.append(_pay(engine, 1000 + 111 * n, "usd" if n % 3 else "eur", payment_id=f"pay_{n}"))
    for n in range(refunds):
        engine.clock.set(T0 + 3600 + 60 * n)
        _refund(engine, made[n]["id"], 300 + n, refund_id=f"rf_{n}")
    return engine


# -- amounts ------


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1000, "usd", "10.00"),
        (-500, "usd", "-5.00"),
        (5, "usd", "0.05"),
        (-5, "usd", "-0.05"),
        (0, "usd", "0.00"),
        (123456789, "EUR", "1234567.89"),
        (1000, "jpy", "1000"),
        (-1000, "jpy", "-1000"),
        (1234, "kwd", "1.234"),
        (-1, "kwd", "-0.001"),
        (100000, "bhd", "100.000"),
        (7, "krw", "7"),
    ],
)
def test_amounts_are_major_units_with_the_currency_exponent(minor: int, currency: str, text: str) -> None:
    assert major(minor, currency) == text


# -- report rows ------


def test_charge_and_refund_rows(tmp_path: Path) -> None:
    engine = _engine()
    charge = _pay(engine, 1000, payment_id="pay_1")
    engine.clock.set(T0 + 61)
    refund = _refund(engine, charge["id"], 400, refund_id="rf_1")
    text = _text(engine.store, [DAY], None, tmp_path)
    assert text.startswith(HEADER + "\n") and text.endswith("\n") and "\r" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [
        {
            "balance_transaction_id": charge["balance_transaction"],
            "created_utc": "2030-01-15 12:00:00",
            "available_on_utc": "2030-01-17 00:00:00",
            "reporting_category": "charge",
            "currency": "usd",
            "gross": "10.00",
            "fee": "0.59",
            "net": "9.41",
            "source_id": charge["id"],
            "charge_id": charge["id"],
            "payment_intent_id": charge["payment_intent"],
            "description": "",
            "payment_metadata[payray_payment_id]": "pay_1",
            "refund_metadata[payray_refund_id]": "",
        },
        {
            "balance_transaction_id": refund["balance_transaction"],
            "created_utc": "2030-01-15 12:01:01",
            "available_on_utc": "2030-01-17 00:00:00",
            "reporting_category": "refund",
            "currency": "usd",
            "gross": "-4.00",
            "fee": "0.00",
            "net": "-4.00",
            "source_id": refund["id"],
            "charge_id": charge["id"],
            "payment_intent_id": charge["payment_intent"],
            "description": "",
            "payment_metadata[payray_payment_id]": "pay_1",
            "refund_metadata[payray_refund_id]": "rf_1",
        },
    ]


def test_dispute_rows_opened_then_won_or_lost(tmp_path: Path) -> None:
    engine = _engine()
    won = _pay(engine, 5000, payment_id="pay_won")
    lost = _pay(engine, 700, "jpy", payment_id="pay_lost")
    engine.clock.set(T0 + 100)
    dispute = engine.open_dispute({"charge": won["id"], "amount": "1500"}, RequestContext())
    other = engine.open_dispute({"payment_intent": lost["payment_intent"]}, RequestContext())
    engine.clock.set(T0 + 200)
    closed = engine.close_dispute(dispute["id"], {"status": "won"}, RequestContext())
    engine.close_dispute(other["id"], {"status": "lost"}, RequestContext())

    txns = [t for t in engine.store.balance_transactions_on(DAY) if t["type"] == "adjustment"]
    assert [(t["reporting_category"], t["amount"], t["fee"], t["net"], t["source"]) for t in txns] == [
        ("dispute", -1500, 0, -1500, dispute["id"]),
        ("dispute", -700, 0, -700, other["id"]),
        ("dispute_reversal", 1500, 0, 1500, dispute["id"]),
    ]
    assert [t["id"] for t in closed["balance_transactions"]] == [txns[0]["id"], txns[2]["id"]]

    rows = [r for r in _rows(engine.store, DAY, tmp_path) if r["reporting_category"] != "charge"]
    summary = [
        (r["reporting_category"], r["currency"], r["gross"], r["fee"], r["net"], r["created_utc"][11:])
        for r in rows
    ]
    assert summary == [
        ("dispute", "usd", "-15.00", "0.00", "-15.00", "12:01:40"),
        ("dispute", "jpy", "-700", "0", "-700", "12:01:40"),
        ("dispute_reversal", "usd", "15.00", "0.00", "15.00", "12:03:20"),
    ]
    assert [(r["source_id"], r["charge_id"], r["payment_intent_id"]) for r in rows] == [
        (dispute["id"], won["id"], won["payment_intent"]),
        (other["id"], lost["id"], lost["payment_intent"]),
        (dispute["id"], won["id"], won["payment_intent"]),
    ]
    assert [r["payment_metadata[payray_payment_id]"] for r in rows] == ["pay_won", "pay_lost", "pay_won"]
    assert rows[0]["description"] == f"Chargeback withdrawal for {won['id']}"


def test_rows_are_in_created_order_and_only_of_the_interval(tmp_path: Path) -> None:
    engine = _engine()
    engine.clock.set(T0 + 500)
    later = _pay(engine)
    engine.clock.set(T0 - 500)  # a clock moved back: inserted after, created before
    earlier = _pay(engine)
    engine.clock.set(MIDNIGHT - 1)
    _pay(engine)  # the day before
    engine.clock.set(MIDNIGHT + 86_400)
    _pay(engine)  # the day after
    rows = _rows(engine.store, DAY, tmp_path)
    assert [r["charge_id"] for r in rows] == [earlier["id"], later["id"]]


def test_columns_pick_and_order_and_quoting(tmp_path: Path) -> None:
    store = Store()
    store.put(
        "balance_transaction",
        {
            "id": "txn_q",
            "object": "balance_transaction",
            "amount": 1234,
            "available_on": MIDNIGHT + 2 * 86_400,
            "created": T0,
            "currency": "kwd",
            "description": 'Fee, "special"',
            "fee": 0,
            "net": 1234,
            "reporting_category": "charge",
            "source": "ch_nowhere",
            "type": "charge",
        },
    )
    text = _text(store, [DAY], None, tmp_path, columns=("gross", "description", "balance_transaction_id"))
    assert text == 'gross,description,balance_transaction_id\n1.234,"Fee, ""special""",txn_q\n'


# -- drift ------


def _inject(engine: Engine, drift: SettlementDrift, day: date = DAY, /, **counts: int) -> list[Injection]:
    return drift.inject(engine.store, DriftRequest(date=day.isoformat(), **counts))


def _expected(clean: list[Row], injections: list[Injection], day: date) -> list[Row]:
    """The clean report of ``day`` changed by exactly what the injections record."""
    by_txn = {i.balance_transaction: i for i in injections if i.day == day}
    rows = []
    for row in clean:
        inj = by_txn.get(row["balance_transaction_id"])
        if inj is None:
            rows.append(row)
        elif inj.kind == "amount_mismatch":
            gross, net = inj.detail["gross"][1], inj.detail["net"][1]
            rows.append({**row, "gross": major(gross, row["currency"]), "net": major(net, row["currency"])})
        elif inj.kind == "currency_mismatch":
            assert inj.detail["currency"][0] == row["currency"]
            rows.append({**row, "currency": inj.detail["currency"][1]})
        else:
            assert inj.kind in ("missing_capture", "late_settlement")
    for inj in injections:
        if inj.kind == "unknown_row" and inj.day == day:
            assert inj.row is not None
            ts = datetime.fromtimestamp(inj.detail["created"], UTC)
            rows.append(
                {
                    "balance_transaction_id": inj.balance_transaction,
                    "created_utc": ts.strftime("%Y-%m-%d %H:%M:%S"),
                    "available_on_utc": (ts.date() + timedelta(days=2)).isoformat() + " 00:00:00",
                    "reporting_category": "charge",
                    "currency": "usd",
                    "gross": major(inj.detail["gross"], "usd"),
                    "fee": major(inj.detail["fee"], "usd"),
                    "net": major(inj.detail["gross"] - inj.detail["fee"], "usd"),
                    "source_id": inj.source_id,
                    "charge_id": inj.charge_id or "",
                    "payment_intent_id": inj.payment_intent_id or "",
                    "description": "",
                    "payment_metadata[payray_payment_id]": "",
                    "refund_metadata[payray_refund_id]": "",
                }
            )
    rows.sort(key=lambda r: r["created_utc"])
    return rows


@pytest.mark.parametrize(
    "counts",
    [
        {"missing_capture": 2},
        {"amount_mismatch": 3},
        {"currency_mismatch": 3},
        {"late_settlement": 2},
        {"unknown_row": 2},
        {
            "missing_capture": 2,
            "amount_mismatch": 2,
            "currency_mismatch": 2,
            "late_settlement": 2,
            "unknown_row": 2,
        },
    ],
)
def test_drift_changes_the_report_by_exactly_the_recorded_injections(
    tmp_path: Path, counts: dict[str, int]
) -> None:
    engine = _busy_day()
    clean = _rows(engine.store, DAY, tmp_path)
    drift = SettlementDrift()
    injections = _inject(engine, drift, seed=7, **counts)
    assert sorted(i.kind for i in injections) == sorted(k for k, n in counts.items() for _ in range(n))
    chosen = [i.balance_transaction for i in injections]
    assert len(set(chosen)) == len(chosen)
    drifted = _rows(engine.store, DAY, tmp_path, drift)
    assert drifted != clean
    assert drifted == _expected(clean, injections, DAY)


def test_what_each_injection_records() -> None:
    engine = _busy_day()
    drift = SettlementDrift()
    injections = _inject(
        engine, drift, missing_capture=1, amount_mismatch=5, currency_mismatch=3, late_settlement=2, seed=3
    )
    for inj in injections:
        out = inj.to_json()
        txn = engine.store.get("balance_transaction", inj.balance_transaction)
        assert txn is not None and out["date"] == "2030-01-15" and out["source_id"] == txn["source"]
        if inj.reporting_category == "refund":
            assert out["reference"] == txn["source"] and out["source_id"].startswith("re_")
        else:
            assert out["reference"] == out["payment_intent_id"] and out["payment_intent_id"].startswith("pi_")
        assert out["charge_id"].startswith("ch_")
        if inj.kind == "missing_capture":
            assert inj.reporting_category == "charge"
        if inj.kind == "amount_mismatch":
            old, new = out["detail"]["gross"]
            assert old == txn["amount"] and 1 <= abs(new) - abs(old) <= 500 and (new > 0) == (old > 0)
            assert out["detail"]["net"] == [old - txn["fee"], new - txn["fee"]]
        if inj.kind == "currency_mismatch":
            assert out["detail"]["currency"] == [
                txn["currency"],
                "usd" if txn["currency"] == "eur" else "eur",
            ]
        if inj.kind == "late_settlement":
            assert out["detail"] == {"settles_on": "2030-01-16"}


def test_late_settlement_appears_the_next_day_shifted_a_day(tmp_path: Path) -> None:
    engine = _busy_day()
    drift = SettlementDrift()
    [late] = _inject(engine, drift, late_settlement=1, seed=1)
    next_day = DAY + timedelta(days=1)
    assert late.balance_transaction not in {
        r["balance_transaction_id"] for r in _rows(engine.store, DAY, tmp_path, drift)
    }
    clean = {r["balance_transaction_id"]: r for r in _rows(engine.store, DAY, tmp_path)}
    [moved] = _rows(engine.store, next_day, tmp_path, drift)
    original = clean[late.balance_transaction]
    assert moved == {
        **original,
        "created_utc": "2030-01-16" + original["created_utc"][10:],
        "available_on_utc": "2030-01-18 00:00:00",
    }
    both = list(csv.DictReader(io.StringIO(_text(engine.store, [DAY, next_day], drift, tmp_path))))
    assert [r["balance_transaction_id"] for r in both].count(late.balance_transaction) == 1
    assert both[-1] == moved
    assert _rows(engine.store, DAY + timedelta(days=2), tmp_path, drift) == []


def test_the_seed_decides_the_rows(tmp_path: Path) -> None:
    engine = _busy_day(charges=30, refunds=10)
    drift = SettlementDrift()
    counts = {"missing_capture": 3, "amount_mismatch": 4, "late_settlement": 2, "unknown_row": 2}
    first = [i.to_json() for i in _inject(engine, drift, seed=42, **counts)]
    report = _text(engine.store, [DAY], drift, tmp_path)
    again = [i.to_json() for i in _inject(engine, drift, seed=42, **counts)]
    assert again == first and _text(engine.store, [DAY], drift, tmp_path) == report
    others = {
        tuple(i.balance_transaction for i in _inject(engine, drift, seed=s, **counts)) for s in range(5)
    }
    assert len(others) > 1
    charges = sorted(t["id"] for t in engine.store.balance_transactions_on(DAY) if t["type"] == "charge")
    [missing] = _inject(engine, drift, seed=9, missing_capture=1)
    assert missing.balance_transaction == random.Random(9).sample(charges, 1)[0]


def test_drift_replaces_a_day_and_is_listed_by_day() -> None:
    engine = _busy_day()
    drift = SettlementDrift()
    _inject(engine, drift, missing_capture=2, seed=1)
    [kept] = _inject(engine, drift, amount_mismatch=1, seed=1)
    other_day = DAY + timedelta(days=3)
    [unknown] = _inject(engine, drift, other_day, unknown_row=1)
    assert drift.injections(DAY) == [kept]
    assert drift.injections() == [kept, unknown]
    assert drift.injections(date(2031, 1, 1)) == []
    drift.clear()
    assert drift.injections() == []


def test_not_enough_rows_says_how_many_there_are() -> None:
    engine = _busy_day(charges=4, refunds=2)
    drift = SettlementDrift()
    with pytest.raises(StripeError) as caught:
        _inject(engine, drift, missing_capture=5)
    assert caught.value.status == 400 and "only 4 charge rows" in caught.value.message
    with pytest.raises(StripeError) as caught:
        _inject(engine, drift, missing_capture=2, amount_mismatch=3, late_settlement=2)
    assert "only 4 charge or refund rows" in caught.value.message
    assert drift.injections() == []
    assert len(_inject(engine, drift, missing_capture=2, amount_mismatch=2, late_settlement=2)) == 6


@pytest.mark.parametrize(
    "body",
    [
        {"date": "2030-1-15"},
        {"date": "20300115"},
        {"date": "2030-02-30"},
        {"missing_capture": 1},
        {"date": "2030-01-15", "missing_capture": -1},
        {"date": "2030-01-15", "amount_mismatch": "2"},
        {"date": "2030-01-15", "late_settlement": True},
        {"date": "2030-01-15", "seed": 1.5},
        {"date": "2030-01-15", "typo": 1},
    ],
)
def test_drift_request_validation(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DriftRequest.model_validate(body)


# -- report run parameters ------


def _params(**parameters: Any) -> dict[str, Any]:
    base = {"interval_start": str(MIDNIGHT), "interval_end": str(MIDNIGHT + 86_400)}
    return {"report_type": "balance_change_from_activity.itemized.3", "parameters": {**base, **parameters}}


def test_report_parameters() -> None:
    parsed = parse_parameters(_params())
    assert parsed.to_json() == {
        "interval_start": MIDNIGHT,
        "interval_end": MIDNIGHT + 86_400,
        "columns": list(COLUMNS),
        "timezone": "Etc/UTC",
    }
    picked = parse_parameters(_params(columns=["net", "currency"], timezone="UTC"))
    assert picked.columns == ("net", "currency") and picked.timezone == "UTC"
    assert days_between(MIDNIGHT, MIDNIGHT + 3 * 86_400) == [DAY + timedelta(days=n) for n in range(3)]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({**_params(), "report_type": "balance.summary.1"}, "report_type"),
        ({"parameters": _params()["parameters"]}, "report_type"),
        (_params(interval_start=str(MIDNIGHT + 1)), "parameters[interval_start]"),
        (_params(interval_end=str(MIDNIGHT + 86_401)), "parameters[interval_end]"),
        (_params(interval_end=str(MIDNIGHT)), "parameters[interval_end]"),
        (_params(interval_end="tomorrow"), "parameters[interval_end]"),
        ({"report_type": "balance_change_from_activity.itemized.3"}, "parameters[interval_start]"),
        (_params(columns=["gross", "colour"]), "parameters[columns]"),
        (_params(columns=["gross", "gross"]), "parameters[columns]"),
        (_params(timezone="Europe/Paris"), "parameters[timezone]"),
        (_params(currency="usd"), "parameters[currency]"),
        ({**_params(), "extra": "1"}, "extra"),
    ],
)
def test_bad_report_parameters(params: dict[str, Any], param: str) -> None:
    with pytest.raises(StripeError) as caught:
        parse_parameters(params)
    assert (caught.value.status, caught.value.type, caught.value.param) == (
        400,
        "invalid_request_error",
        param,
    )


# -- report runs ------


def _runs(store: Store, directory: Path | None) -> ReportRuns:
    clock = Clock()
    clock.set(T0 + 86_400)
    return ReportRuns(store, clock, SettlementDrift(), directory)


def test_a_run_is_pending_then_succeeds_with_a_file(tmp_path: Path) -> None:
    engine = _busy_day()
    runs = _runs(engine.store, tmp_path / "reports")

    async def scenario() -> dict[str, Any]:
        run = runs.create(_params())
        assert run["status"] == "pending" and run["result"] is None and run["id"].startswith("frr_")
        await runs.idle()
        return runs.run(run["id"], "http://psp.test")

    run = asyncio.run(scenario())
    assert run["status"] == "succeeded" and run["succeeded_at"] == T0 + 86_400 and run["error"] is None
    file = run["result"]
    assert file["object"] == "file" and file["purpose"] == "finance_report_run" and file["type"] == "csv"
    assert file["url"] == f"http://psp.test/v1/files/{file['id']}/contents"
    assert file["filename"] == f"{run['id']}.csv" and runs.file(file["id"], "http://psp.test") == file
    path = runs.contents(file["id"])
    assert path.parent == tmp_path / "reports" and path.stat().st_size == file["size"]
    assert path.read_text() == _text(engine.store, [DAY], None, tmp_path)
    for missing in (lambda: runs.run("frr_nope", ""), lambda: runs.file("file_nope", "")):
        with pytest.raises(StripeError) as caught:
            missing()
        assert caught.value.status == 404 and caught.value.code == "resource_missing"


def test_runs_survive_a_restart_and_a_reset_forgets_them(tmp_path: Path) -> None:
    engine = _busy_day()
    store = Store(Journal(tmp_path))
    for txn in engine.store.balance_transactions_on(DAY):
        store.put("balance_transaction", txn)
    runs = _runs(store, tmp_path / "reports")

    async def create_and_wait() -> str:
        run_id: str = runs.create(_params())["id"]
        await runs.idle()
        return run_id

    run_id = asyncio.run(create_and_wait())

    async def create_pending() -> str:
        return str(runs.create(_params())["id"])

    interrupted = asyncio.run(create_pending())  # the loop ends before the thread reports back
    store.close()
    replayed = Store(Journal(tmp_path))
    again = _runs(replayed, tmp_path / "reports")
    done = again.run(run_id, "http://x")
    assert done["status"] == "succeeded" and again.contents(done["result"]["id"]).is_file()
    assert again.run(interrupted, "http://x")["status"] == "failed"
    replayed.reset()
    again.reset()
    assert replayed.get("report_run", run_id) is None and not list((tmp_path / "reports").glob("*.csv"))


def test_a_memory_only_emulator_writes_to_a_temporary_directory() -> None:
    runs = _runs(Store(), None)
    directory = runs.directory
    assert directory.is_dir()
    del runs
    assert not directory.exists()


# -- bulk seeding ------


def test_synthetic_day_is_deterministic_and_shaped_as_promised() -> None:
    charges = list(synthetic.synthetic_day(DAY, 1000, "bx"))
    assert charges == list(synthetic.synthetic_day(DAY, 1000, "bx"))
    first = charges[0]
    assert (first.payment_intent_id, first.charge_id, first.charge_txn_id, first.payment_id) == (
        "pi_bx000000000",
        "ch_bx000000000",
        "txn_bxc000000000",
        "pay_bx000000000",
    )
    assert [c.index for c in charges] == list(range(1000))
    assert all(100 <= c.amount <= 99_999 and c.fee == processing_fee(c.amount, c.currency) for c in charges)
    assert len({c.amount for c in charges}) == 1000
    assert [c.created for c in charges] == sorted(c.created for c in charges)
    assert charges[0].created >= MIDNIGHT and charges[-1].created < MIDNIGHT + 86_400
    currencies = [c.currency for c in charges]
    assert (currencies.count("jpy"), currencies.count("eur"), currencies.count("usd")) == (20, 180, 800)
    refunded = [c for c in charges if c.refund_id is not None]
    assert [c.index + 1 for c in refunded] == list(range(10, 1001, 10))
    tenth = refunded[0]
    assert (tenth.refund_id, tenth.refund_txn_id) == ("re_bx000000009", "txn_bxr000000009")
    for c in refunded:
        assert c.refund_amount == c.amount // 2 and c.refund_created is not None
        assert c.created <= c.refund_created < MIDNIGHT + 86_400
    assert not [c for c in synthetic.synthetic_day(DAY, 100, "bx", refund_every=0) if c.refund_id]
    assert next(synthetic.synthetic_day(DAY, 5, "by")).charge_id == "ch_by000000000"


def test_seeded_day_is_reported_and_listed(tmp_path: Path) -> None:
    engine = _engine()
    live = _pay(engine)  # on DAY at noon, before the seeded (earlier) day is loaded
    seeded_day = DAY - timedelta(days=3)
    objects = synthetic.build_objects(seeded_day, 300, "s1", refund_every=7)
    assert not synthetic.already_seeded(engine.store, "s1")
    assert synthetic.load(engine.store, objects) == {
        "charges": 300,
        "refunds": 42,
        "balance_transactions": 342,
    }
    assert synthetic.already_seeded(engine.store, "s1") and not synthetic.already_seeded(engine.store, "s10")
    rows = _rows(engine.store, seeded_day, tmp_path)
    assert len(rows) == 342 and [r["created_utc"] for r in rows] == sorted(r["created_utc"] for r in rows)
    by_txn = {r["balance_transaction_id"]: r for r in rows}
    for c in synthetic.synthetic_day(seeded_day, 300, "s1", refund_every=7):
        row = by_txn[c.charge_txn_id]
        assert (row["charge_id"], row["payment_intent_id"], row["payment_metadata[payray_payment_id]"]) == (
            c.charge_id,
            c.payment_intent_id,
            c.payment_id,
        )
        assert (row["gross"], row["fee"], row["currency"]) == (
            major(c.amount, c.currency),
            major(c.fee, c.currency),
            c.currency,
        )
        if c.refund_txn_id is not None:
            refund = by_txn[c.refund_txn_id]
            assert refund["source_id"] == c.refund_id and refund["charge_id"] == c.charge_id
            assert refund["gross"] == major(-(c.refund_amount or 0), c.currency)
    newest, _ = engine.store.index("charge").page(PageRequest(limit=2))
    assert newest == [live["id"], "ch_s1000000299"]
    oldest = engine.store.index("charge").ids_between(0, 2**40)
    assert oldest[0] == "ch_s1000000000" and len(oldest) == 301
    keys = [engine.store.key_of("charge", i) for i in oldest]
    assert keys == sorted(k for k in keys if k is not None)
    drift = SettlementDrift()
    assert len(drift.inject(engine.store, DriftRequest(date=seeded_day.isoformat(), missing_capture=3))) == 3


def test_bulk_loads_merge_into_the_created_order_index() -> None:
    store = Store()
    for n, created in enumerate((100, 200, 300)):
        store.put("customer", {"id": f"cus_{n}", "object": "customer", "created": created})
    loaded = [{"id": f"cus_b{c}", "object": "customer", "created": c} for c in (50, 150, 350, 250, 120, 400)]
    assert store.load_bulk("customer", loaded) == 6
    index = store.index("customer")
    ordered = index.ids_between(0, 1000)
    created_at = [store.objects("customer")[i]["created"] for i in ordered]
    assert created_at == [50, 100, 120, 150, 200, 250, 300, 350, 400]
    assert index.page(PageRequest(limit=2))[0] == ["cus_b400", "cus_b350"]
    assert store.get("customer", "cus_b250") is not None and store.count("customer") == 9
