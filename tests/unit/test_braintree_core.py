"""The Braintree personality's pure core against the SDK's own codec and signature check: no sockets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import braintree
import pytest
from braintree.util.xml_util import XmlUtil

from psp.emulator.braintree import amounts, machine, notifications, render, xml_codec
from psp.emulator.braintree import transactions as tx
from psp.emulator.braintree.errors import BraintreeError, Code, error_response, refused
from psp.emulator.braintree.methods import NONCES, authorize, resolve
from psp.emulator.braintree.store import BraintreeStore
from psp.emulator.store import Journal

NOON = 1_767_268_800  # 2026-01-01 12:00:00 UTC


def _sale(submit: bool = False, amount: int = 1000) -> tx.Txn:
    instrument = NONCES["fake-valid-nonce"]
    return tx.sale(
        txn_id="abc12345",
        merchant_id="m",
        merchant_account_id="m",
        amount=amount,
        order_id="o-1",
        instrument=instrument,
        outcome=authorize(instrument, amount),
        submit=submit,
        now=NOON,
    )


def test_what_the_sdk_generates_decodes_to_the_same_params() -> None:
    params = {
        "transaction": {
            "amount": Decimal("10.50"),
            "order_id": "a&b<c>",
            "options": {"submit_for_settlement": True},
            "api_request_key": "k",
            "line_items": [{"name": "tea"}],
        }
    }
    root, decoded = xml_codec.decode(XmlUtil.xml_from_dict(params))
    assert root == "transaction"
    assert decoded == {
        "amount": "10.50",
        "order_id": "a&b<c>",
        "options": {"submit_for_settlement": True},
        "api_request_key": "k",
        "line_items": [{"name": "tea"}],
    }


def test_what_the_emulator_encodes_the_sdk_parses() -> None:
    rendered = render.transaction(_sale(submit=True))
    parsed = XmlUtil.dict_from_xml(xml_codec.encode("transaction", rendered))["transaction"]
    txn = braintree.Transaction(None, parsed)
    assert txn.status == "submitted_for_settlement" and txn.amount == Decimal("10.00")
    assert txn.refund_ids == [] and txn.order_id == "o-1" and txn.refunded_transaction_id is None
    assert [event.status for event in txn.status_history] == ["authorized", "submitted_for_settlement"]


def test_an_error_response_is_an_error_result_with_nested_codes() -> None:
    body = error_response(refused(Code.CannotRefundUnlessSettled))
    parsed = XmlUtil.dict_from_xml(xml_codec.encode("api_error_response", body))["api_error_response"]
    result = braintree.ErrorResult(None, parsed)
    assert result.errors.for_object("transaction").on("base")[0].code == "91506"
    assert result.message == "Cannot refund transaction unless it is settled."


@pytest.mark.parametrize(
    "body", [b"<transaction><amount>1</amount>", b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>", b"\xff"]
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(xml_codec.XmlDecodeError):
        xml_codec.decode(body)


def test_every_event_in_every_status_moves_or_is_refused_with_a_code() -> None:
    statuses = {status for status, _ in machine.TRANSITIONS} | set(machine.TRANSITIONS.values())
    for status in statuses:
        for event in machine.REFUSALS:
            if (status, event) in machine.TRANSITIONS:
                assert machine.next_status(status, event) == machine.TRANSITIONS[(status, event)]
            else:
                with pytest.raises(BraintreeError) as caught:
                    machine.next_status(status, event)
                assert caught.value.errors[0].code is machine.REFUSALS[event]


@pytest.mark.parametrize(
    ("txn_type", "status", "remaining", "amount", "code"),
    [
        ("sale", "authorized", 1000, 1000, Code.CannotRefundUnlessSettled),
        ("sale", "submitted_for_settlement", 1000, 1000, Code.CannotRefundUnlessSettled),
        ("sale", "settling", 1000, 1000, Code.CannotRefundSettlingTransaction),
        ("credit", "settled", 1000, 1000, Code.CannotRefundCredit),
        ("sale", "settled", 0, 1, Code.HasAlreadyBeenRefunded),
        ("sale", "settled", 500, 501, Code.RefundAmountIsTooLarge),
        ("sale", "settled", 500, 500, None),
    ],
)
def test_refund_rules(txn_type: str, status: str, remaining: int, amount: int, code: Code | None) -> None:
    assert machine.refund_refusal(txn_type, status, remaining, amount) is code


def test_a_batch_settles_at_the_midnight_after_submission() -> None:
    submitted = _sale(submit=True)
    assert submitted["settles_at"] == NOON + 12 * 3600
    settled = tx.settlement_event(submitted, "settle", submitted["settles_at"])
    assert settled["status"] == "settled" and settled["settlement_date"] == "2026-01-01"
    parent, credit = tx.refund(settled, "cred0001", 400, None, NOON + 86_400)
    assert credit["type"] == "credit" and credit["refunded_transaction_id"] == "abc12345"
    assert parent["refund_ids"] == ["cred0001"] and parent["refunded_amount"] == 400


@pytest.mark.parametrize(
    ("raw", "minor", "code"),
    [
        ("10", 1000, None),
        ("10.5", 1050, None),
        ("0.01", 1, None),
        ("", None, Code.AmountIsRequired),
        ("1.234", None, Code.AmountIsInvalid),
        ("-1.00", None, Code.AmountCannotBeNegative),
        ("0.00", None, Code.AmountMustBeGreaterThanZero),
    ],
)
def test_amounts(raw: str, minor: int | None, code: Code | None) -> None:
    if code is None:
        assert amounts.parse(raw) == minor and amounts.text(amounts.parse(raw)) == f"{Decimal(raw):.2f}"
    else:
        with pytest.raises(amounts.AmountError) as caught:
            amounts.parse(raw)
        assert caught.value.error.code is code


def test_sandbox_amounts_and_forced_declines_map_to_processor_responses() -> None:
    card = resolve({"payment_method_nonce": "fake-valid-nonce"})
    assert authorize(card, 200_100).response.code == "2001"
    assert authorize(card, 300_000).status == "failed"
    forced = authorize(card, 1000, forced_decline="expired_card")
    assert forced.status == "processor_declined" and forced.response.type == "hard_declined"


def test_the_sdk_accepts_the_emulators_webhook_signature() -> None:
    config = braintree.Configuration(braintree.Environment.Development, "m", "pub", "priv")
    gateway = braintree.BraintreeGateway(config)
    document = notifications.notification_xml(
        "transaction_settled", "transaction", render.transaction(_sale(submit=True)), NOON
    )
    payload = notifications.payload(document)
    parsed = gateway.webhook_notification.parse(notifications.signature("pub", "priv", payload), payload)
    assert parsed.kind == "transaction_settled" and parsed.transaction.id == "abc12345"
    with pytest.raises(braintree.exceptions.InvalidSignatureError):
        gateway.webhook_notification.parse(notifications.signature("pub", "other", payload), payload)


def test_the_store_replays_transactions_and_their_due_batches(tmp_path: Path) -> None:
    store = BraintreeStore(Journal(tmp_path))
    store.put_object("transaction", _sale())
    store.put_object("transaction", _sale(submit=True))
    store.close()
    replayed = BraintreeStore(Journal(tmp_path))
    assert replayed.find("transaction", "abc12345")["status"] == "submitted_for_settlement"  # type: ignore[index]
    assert [t["id"] for t in replayed.by_order_id("m", "o-1")] == ["abc12345"]
    assert replayed.due(NOON) == []
    assert [t["id"] for t in replayed.due(NOON + 12 * 3600)] == ["abc12345"]
    replayed.close()
