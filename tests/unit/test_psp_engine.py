"""The emulator's Stripe rules without HTTP: lifecycle, refund limits, idempotency and journal replay."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from psp.emulator.balance import available_on, processing_fee
from psp.emulator.clock import Clock
from psp.emulator.engine import Engine, RequestContext
from psp.emulator.errors import StripeError
from psp.emulator.idempotency import IdempotencyTable, Proceed, Replay, fingerprint
from psp.emulator.store import Journal, Store

T0 = int(datetime(2030, 1, 15, 12, tzinfo=UTC).timestamp())


def _engine(store: Store | None = None) -> Engine:
    clock = Clock()
    clock.set(T0)
    return Engine(store or Store(), clock)


def _pi(engine: Engine, pm: str = "pm_card_visa", **extra: Any) -> dict[str, Any]:
    params = {"amount": "1000", "currency": "usd", "payment_method": pm, "confirm": "true", **extra}
    return engine.create_payment_intent(params, RequestContext(idempotency_key=extra.get("key")))


def test_confirmed_intent_is_captured_with_a_balance_transaction() -> None:
    engine = _engine()
    intent = _pi(engine, metadata={"payray_payment_id": "p1"})
    assert intent["status"] == "succeeded" and intent["amount_received"] == 1000
    charge = engine.store.get("charge", intent["latest_charge"])
    assert charge is not None and charge["captured"] and charge["amount_captured"] == 1000
    txn = engine.store.get("balance_transaction", charge["balance_transaction"])
    assert txn is not None
    assert (txn["fee"], txn["net"], txn["reporting_category"]) == (59, 941, "charge")
    assert txn["available_on"] == int(datetime(2030, 1, 17, tzinfo=UTC).timestamp())
    assert engine.store.captures_by_payment_id["p1"] == 1
    types = [e["type"] for e in engine.store._objects["event"].values()]
    assert types == ["payment_intent.created", "charge.succeeded", "payment_intent.succeeded"]


def test_decline_raises_card_error_and_leaves_a_failed_charge() -> None:
    engine = _engine()
    with pytest.raises(StripeError) as caught:
        _pi(engine, pm="pm_card_chargeDeclinedInsufficientFunds")
    err = caught.value
    assert (err.status, err.type, err.code, err.decline_code) == (
        402,
        "card_error",
        "card_declined",
        "insufficient_funds",
    )
    assert err.payment_intent is not None
    intent = engine.store.get("payment_intent", err.payment_intent["id"])
    assert intent is not None and intent["status"] == "requires_payment_method"
    assert intent["last_payment_error"]["decline_code"] == "insufficient_funds"
    charge = engine.store.get("charge", err.charge or "")
    assert charge is not None and charge["status"] == "failed" and not charge["captured"]
    assert engine.store.captures == 0


def test_forced_decline_from_the_fault_injector() -> None:
    engine = _engine()
    ctx = RequestContext(decide_decline=lambda _id: "expired_card")
    with pytest.raises(StripeError) as caught:
        engine.create_payment_intent(
            {"amount": "500", "currency": "eur", "payment_method": "pm_card_visa", "confirm": "true"}, ctx
        )
    assert caught.value.code == "expired_card"


def test_refunds_never_exceed_the_captured_amount() -> None:
    engine = _engine()
    intent = _pi(engine)
    ctx = RequestContext()
    engine.create_refund({"payment_intent": intent["id"], "amount": "300"}, ctx)
    with pytest.raises(StripeError) as too_much:
        engine.create_refund({"payment_intent": intent["id"], "amount": "701"}, ctx)
    assert too_much.value.code == "amount_too_large"
    refund = engine.create_refund({"charge": intent["latest_charge"]}, ctx)
    assert refund["amount"] == 700
    with pytest.raises(StripeError) as again:
        engine.create_refund({"payment_intent": intent["id"], "amount": "1"}, ctx)
    assert again.value.code == "charge_already_refunded"
    charge = engine.store.get("charge", intent["latest_charge"])
    assert charge is not None and charge["refunded"] and charge["amount_refunded"] == 1000


def test_manual_capture_partial_then_refund_only_what_was_captured() -> None:
    engine = _engine()
    intent = _pi(engine, capture_method="manual")
    assert intent["status"] == "requires_capture" and intent["amount_capturable"] == 1000
    with pytest.raises(StripeError) as uncaptured:
        engine.create_refund({"payment_intent": intent["id"]}, RequestContext())
    assert uncaptured.value.code == "charge_not_refundable"
    captured = engine.capture_payment_intent(intent["id"], {"amount_to_capture": "600"}, RequestContext())
    assert captured["status"] == "succeeded" and captured["amount_received"] == 600
    with pytest.raises(StripeError):
        engine.create_refund({"payment_intent": intent["id"], "amount": "601"}, RequestContext())
    assert engine.create_refund({"payment_intent": intent["id"]}, RequestContext())["amount"] == 600


def test_cancel_releases_an_authorization_and_refuses_after_success() -> None:
    engine = _engine()
    held = _pi(engine, capture_method="manual")
    canceled = engine.cancel_payment_intent(
        held["id"], {"cancellation_reason": "abandoned"}, RequestContext()
    )
    assert canceled["status"] == "canceled" and canceled["cancellation_reason"] == "abandoned"
    done = _pi(engine)
    with pytest.raises(StripeError) as caught:
        engine.cancel_payment_intent(done["id"], {}, RequestContext())
    assert caught.value.code == "payment_intent_unexpected_state"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"currency": "usd"}, "parameter_missing"),
        ({"amount": "0", "currency": "usd"}, "parameter_invalid"),
        ({"amount": "10", "currency": "usd", "bogus": "1"}, "parameter_unknown"),
        ({"amount": "10", "currency": "usd", "payment_method": "pm_nope"}, "resource_missing"),
        ({"amount": "10", "currency": "usd", "capture_method": "later"}, "parameter_invalid"),
    ],
)
def test_invalid_parameters_are_not_saved_for_replay(params: dict[str, Any], code: str) -> None:
    with pytest.raises(StripeError) as caught:
        _engine().create_payment_intent(params, RequestContext())
    assert caught.value.code == code and not caught.value.saved


def test_fees() -> None:
    assert processing_fee(1000, "usd") == 59
    assert processing_fee(1000, "EUR") == 54
    assert processing_fee(10, "usd") == 10
    assert processing_fee(1000, "jpy") == 69
    assert available_on(int(datetime(2030, 1, 31, 23, 59, tzinfo=UTC).timestamp())) == int(
        datetime(2030, 2, 2, tzinfo=UTC).timestamp()
    )


def test_idempotency_table_replays_conflicts_and_expires() -> None:
    now = [float(T0)]
    table = IdempotencyTable(Store(), wall=lambda: now[0])
    fp = fingerprint("POST", "/v1/payment_intents", {"amount": "1"})
    assert isinstance(table.begin("sk", "k", fp), Proceed)
    with pytest.raises(StripeError) as in_flight:
        table.begin("sk", "k", fp)
    assert in_flight.value.status == 409
    with pytest.raises(StripeError) as other:
        table.begin("sk", "k", fingerprint("POST", "/v1/payment_intents", {"amount": "2"}))
    assert other.value.status == 400 and other.value.type == "idempotency_error"
    table.finish("sk", "k", fp, 200, '{"id": "pi_1"}', "req_1")
    assert table.begin("sk", "k", fp) == Replay(200, '{"id": "pi_1"}', "req_1")
    assert isinstance(table.begin("other_key", "k", fp), Proceed)
    now[0] = T0 + 24 * 3600 - 1
    assert isinstance(table.begin("sk", "k", fp), Replay)
    now[0] = T0 + 24 * 3600
    assert isinstance(table.begin("sk", "k", fp), Proceed)


def test_journal_replay_rebuilds_objects_indexes_and_counters(tmp_path: Path) -> None:
    store = Store(Journal(tmp_path))
    engine = _engine(store)
    intent = _pi(engine, metadata={"payray_payment_id": "p9"}, customer=None)
    engine.create_refund({"payment_intent": intent["id"], "amount": "100"}, RequestContext())
    store.save_idempotent("sk", "k", {"fingerprint": "f", "status": 200, "body": "{}", "at": T0})
    store.close()
    with (tmp_path / Journal.FILE_NAME).open("a") as f:
        f.write('{"op": "put", "kind": "cha')
    replayed = Store(Journal(tmp_path))
    assert replayed.get("payment_intent", intent["id"]) == store.get("payment_intent", intent["id"])
    assert replayed.captures_by_payment_id == {"p9": 1}
    assert replayed.idempotent("sk", "k") is not None
    refunds = replayed.index("refund", "payment_intent", intent["id"])
    assert len(refunds) == 1
    assert len(replayed.index("payment_intent", "metadata.payray_payment_id", "p9")) == 1
    day = replayed.balance_transactions_on(date(2030, 1, 15))
    assert sorted(t["type"] for t in day) == ["charge", "refund"]
    assert len(replayed.balance_transactions_on(date(2030, 1, 17), by="available_on")) == 2
    replayed.reset()
    assert Store(Journal(tmp_path)).count("payment_intent") == 0
