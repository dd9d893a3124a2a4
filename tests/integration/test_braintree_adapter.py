"""BraintreePsp (Braintree's official SDK) against the emulator's Braintree personality: the port's outcomes,
the janitor's resolution of an unknown capture, refunds before and after settlement, and the report."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest

from ledger.reconcile import REPORT_COLUMNS
from psp.braintree.adapter import BraintreePsp
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.emulator.server import EmulatorProcess
from psp.port import PspChargeResult, PspConfigurationError
from tests.integration.emulator_control import control

pytestmark = pytest.mark.integration

T = TypeVar("T")
DAY_S = 86_400


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-braintree-adapter")) as process:
        yield process


@pytest.fixture
def base(emulator: EmulatorProcess) -> Iterator[str]:
    assert emulator.url is not None
    yield emulator.url
    control(emulator.url, "DELETE", "/_emulator/faults")
    control(emulator.url, "POST", "/_emulator/clock", {"now": None})


def braintree_faults(base: str, **faults: Any) -> None:
    control(base, "POST", "/_emulator/faults", {"psp": "braintree", **faults})


def set_clock(base: str, now: float) -> None:
    control(base, "POST", "/_emulator/clock", {"now": now, "frozen": True})


def sales_count(base: str) -> int:
    count: int = control(base, "GET", "/_emulator/braintree/stats")["transaction"]
    return count


def psp_at(base: str, *, private_key: str = DEFAULT_PRIVATE_KEY, timeout_s: float = 5.0) -> BraintreePsp:
    return BraintreePsp(DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, private_key, base, timeout_s=timeout_s)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def closing(psp: BraintreePsp, coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    finally:
        await psp.aclose()


async def charge(
    psp: BraintreePsp,
    payment_id: str,
    *,
    amount: int = 1250,
    method: str = "fake-valid-nonce",
    key: str | None = None,
    manual: bool = False,
    currency: str = "USD",
) -> PspChargeResult:
    return await psp.capture(
        payment_id=payment_id,
        amount=amount,
        currency=currency,
        payment_method=method,
        idempotency_key=key or f"att-{payment_id}",
        metadata={"merchant_id": "m1"},
        capture_method="manual" if manual else "automatic",
    )


def new_payment() -> str:
    return f"pay-{uuid.uuid4().hex[:16]}"


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


# -- charges ------


def test_an_automatic_capture_is_captured_and_found_by_its_payment_id(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, PspChargeResult | None, PspChargeResult | None]:
        captured = await charge(psp, payment_id)
        return captured, await psp.lookup(payment_id=payment_id), await psp.lookup(payment_id="never-seen")

    captured, found, missing = run(closing(psp, scenario()))
    assert captured.status == "captured" and (captured.amount, captured.currency) == (1250, "usd")
    assert captured.psp_reference and captured.charge_id == captured.psp_reference
    assert found == captured
    assert missing is None


def test_manual_authorizes_then_a_partial_capture_captures_that_much(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, PspChargeResult, PspChargeResult]:
        held = await charge(psp, payment_id, amount=2000, manual=True)
        assert held.psp_reference is not None
        captured = await psp.capture_authorized(
            payment_id=payment_id, psp_reference=held.psp_reference, amount=1500, idempotency_key="cap-1"
        )
        again = await psp.capture_authorized(
            payment_id=payment_id, psp_reference=held.psp_reference, amount=1500, idempotency_key="cap-1"
        )
        return held, captured, again

    held, captured, again = run(closing(psp, scenario()))
    assert held.status == "authorized" and held.amount == 2000
    assert captured.status == "captured" and captured.amount == 1500
    assert again == captured


def test_a_capture_after_the_authorization_was_voided_is_canceled(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, PspChargeResult, PspChargeResult]:
        held = await charge(psp, payment_id, manual=True)
        assert held.psp_reference is not None
        canceled = await psp.cancel_authorization(
            payment_id=payment_id, psp_reference=held.psp_reference, idempotency_key="void-1"
        )
        late = await psp.capture_authorized(
            payment_id=payment_id, psp_reference=held.psp_reference, amount=1250, idempotency_key="cap-2"
        )
        return (
            canceled,
            late,
            await psp.cancel_authorization(
                payment_id=payment_id, psp_reference=held.psp_reference, idempotency_key="void-2"
            ),
        )

    canceled, late, again = run(closing(psp, scenario()))
    assert canceled.status == "canceled" and canceled.currency == "usd"
    assert late.status == "canceled"
    assert again.status == "canceled"


def test_canceling_a_captured_sale_answers_captured_and_leaves_it_captured(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, PspChargeResult | None]:
        captured = await charge(psp, payment_id)
        assert captured.psp_reference is not None
        answer = await psp.cancel_authorization(
            payment_id=payment_id, psp_reference=captured.psp_reference, idempotency_key="void-3"
        )
        return answer, await psp.lookup(payment_id=payment_id)

    answer, found = run(closing(psp, scenario()))
    assert answer.status == "captured"
    assert found is not None and found.status == "captured"


@pytest.mark.parametrize(
    ("method", "code"),
    [
        ("fake-processor-declined-visa-nonce", "do_not_honor"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("fake-processor-failure-jcb-nonce", "processing_error"),
        ("fake-gateway-rejected-fraud-nonce", "fraudulent"),
        ("no-such-nonce", "invalid_request"),
    ],
)
def test_declines_carry_a_stripe_style_code(base: str, method: str, code: str) -> None:
    psp = psp_at(base)
    result = run(closing(psp, charge(psp, new_payment(), method=method)))
    assert result.status == "declined" and result.failure_code == code
    assert result.failure_message


def test_a_currency_without_a_merchant_account_is_declined_without_a_request(base: str) -> None:
    count = sales_count(base)
    psp = psp_at(base)
    result = run(closing(psp, charge(psp, new_payment(), currency="EUR")))
    assert result.status == "declined" and result.failure_code == "currency_not_supported"
    assert sales_count(base) == count


# -- api_request_key ------


def test_the_same_key_returns_the_same_sale_and_another_request_with_it_is_our_bug(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, int, PspChargeResult]:
        first = await charge(psp, payment_id, key="att-same")
        count = sales_count(base)
        return first, count, await charge(psp, payment_id, key="att-same")

    first, count, again = run(closing(psp, scenario()))
    assert again == first and sales_count(base) == count
    with pytest.raises(PspConfigurationError, match="915232"):
        run(closing(psp, charge(psp, payment_id, key="att-same", amount=999)))


# -- unknown outcomes ------


def test_a_timeout_after_the_sale_is_unknown_and_the_janitor_resolves_it(base: str) -> None:
    payment_id = new_payment()
    braintree_faults(base, timeout_after_capture_rate=1.0, hold_ms=3000)
    impatient = psp_at(base, timeout_s=1.0)
    lost = run(closing(impatient, charge(impatient, payment_id, key="att-lost")))
    assert lost.status == "unknown" and lost.detail is not None and "Timeout" in lost.detail
    control(base, "DELETE", "/_emulator/faults")
    count = sales_count(base)
    psp = psp_at(base)

    async def janitor() -> tuple[PspChargeResult | None, PspChargeResult]:
        return await psp.lookup(payment_id=payment_id), await charge(psp, payment_id, key="att-lost")

    found, retried = run(closing(psp, janitor()))
    assert found is not None and found.status == "captured" and found.amount == 1250
    assert retried == found
    assert sales_count(base) == count


@pytest.mark.parametrize(("status", "named"), [(500, "ServerError (HTTP 500)"), (503, "HTTP 503")])
def test_a_5xx_is_unknown_and_names_its_status(base: str, status: int, named: str) -> None:
    braintree_faults(base, error_rate=1.0, error_status=status)
    psp = psp_at(base)
    result = run(closing(psp, charge(psp, new_payment())))
    assert result.status == "unknown" and result.detail is not None and named in result.detail


def test_an_outage_is_unknown_for_charges_and_refunds_and_ping_says_no(base: str) -> None:
    now = time.time()
    braintree_faults(base, outages=[{"start": now - 1, "end": now + 60, "mode": "reset"}])
    psp = psp_at(base)

    async def scenario() -> tuple[PspChargeResult, Any, PspChargeResult | None, bool]:
        payment_id = new_payment()
        refund = await psp.refund(
            payment_id=payment_id, psp_reference="abc12345", amount=100, idempotency_key="ref-x"
        )
        return (
            await charge(psp, payment_id),
            refund,
            await psp.lookup(payment_id=payment_id),
            await psp.ping(),
        )

    captured, refund, found, pinged = run(closing(psp, scenario()))
    assert (
        captured.status == "unknown" and captured.detail is not None and "ConnectionError" in captured.detail
    )
    assert refund.status == "unknown"
    assert found is not None and found.status == "unknown"
    assert pinged is False


def test_bad_credentials_are_a_configuration_error_and_ping_says_no(base: str) -> None:
    stranger = psp_at(base, private_key="wrong_private_key")
    with pytest.raises(PspConfigurationError):
        run(closing(stranger, charge(stranger, new_payment())))
    with pytest.raises(PspConfigurationError):
        run(closing(stranger, stranger.lookup(payment_id="any")))
    assert run(closing(stranger, stranger.ping())) is False
    psp = psp_at(base)
    assert run(closing(psp, psp.ping())) is True


def test_an_unreachable_psp_is_unknown(base: str) -> None:
    psp = psp_at("http://127.0.0.1:9", timeout_s=1.0)
    result = run(closing(psp, charge(psp, new_payment())))
    assert result.status == "unknown" and result.detail is not None and "ConnectionError" in result.detail


# -- refunds ------


def test_refunds_after_settlement_partial_then_the_rest(base: str) -> None:
    payment_id = new_payment()
    psp = psp_at(base)

    async def scenario() -> tuple[Any, Any, Any, list[Any], list[Any], list[Any]]:
        captured = await charge(psp, payment_id, amount=3000)
        assert captured.psp_reference is not None
        set_clock(base, time.time() + 2 * DAY_S)
        ref = captured.psp_reference
        part = await psp.refund(
            payment_id=payment_id, psp_reference=ref, amount=1000, idempotency_key="r1", refund_id="rf-1"
        )
        replay = await psp.refund(
            payment_id=payment_id, psp_reference=ref, amount=1000, idempotency_key="r1", refund_id="rf-1"
        )
        rest = await psp.refund(
            payment_id=payment_id, psp_reference=ref, amount=2000, idempotency_key="r2", refund_id="rf-2"
        )
        too_much = await psp.refund(
            payment_id=payment_id, psp_reference=ref, amount=1, idempotency_key="r3", refund_id="rf-3"
        )
        listed = await psp.refunds_for(psp_reference=ref)
        every = [r async for r in psp.list_refunds() if r.refund_id in ("rf-1", "rf-2")]
        captures = [c async for c in psp.list_captures() if c.payment_id == payment_id]
        return part, replay, (rest, too_much), listed, every, captures

    part, replay, (rest, too_much), listed, every, captures = run(closing(psp, scenario()))
    assert part.status == "refunded" and part.refund_reference
    assert replay == part
    assert rest.status == "refunded"
    assert too_much.status == "failed" and too_much.detail is not None and "91512" in too_much.detail
    assert [(r.refund_id, r.amount, r.status) for r in listed] == [
        ("rf-2", 2000, "pending"),
        ("rf-1", 1000, "pending"),
    ]
    assert {r.psp_reference for r in listed} == {part.refund_reference, rest.refund_reference}
    assert sorted(r.refund_id or "" for r in every) == ["rf-1", "rf-2"]
    assert [(c.amount, c.currency) for c in captures] == [(3000, "usd")]


def test_a_full_refund_before_settlement_voids_and_a_partial_one_fails(base: str) -> None:
    psp = psp_at(base)
    whole, parted = new_payment(), new_payment()

    async def scenario() -> tuple[Any, Any, Any, list[Any], PspChargeResult | None, list[Any], Any]:
        first = await charge(psp, whole)
        second = await charge(psp, parted)
        assert first.psp_reference is not None and second.psp_reference is not None
        voided = await psp.refund(
            payment_id=whole,
            psp_reference=first.psp_reference,
            amount=1250,
            idempotency_key="rv",
            refund_id="rv",
        )
        again = await psp.refund(
            payment_id=whole,
            psp_reference=first.psp_reference,
            amount=1250,
            idempotency_key="rv",
            refund_id="rv",
        )
        partial = await psp.refund(
            payment_id=parted, psp_reference=second.psp_reference, amount=500, idempotency_key="rp"
        )
        listed = await psp.refunds_for(psp_reference=first.psp_reference)
        captures = [c async for c in psp.list_captures() if c.payment_id == whole]
        return voided, again, partial, listed, await psp.lookup(payment_id=whole), captures, first

    voided, again, partial, listed, found, captures, first = run(closing(psp, scenario()))
    assert voided.status == "refunded" and voided.refund_reference == first.psp_reference
    assert again == voided
    assert partial.status == "failed" and partial.detail is not None and "91506" in partial.detail
    assert [(r.psp_reference, r.amount, r.status) for r in listed] == [
        (first.psp_reference, 1250, "succeeded")
    ]
    assert found is not None and found.status == "declined" and found.failure_code == "canceled"
    assert [c.psp_reference for c in captures] == [first.psp_reference]


# -- settlement report ------


def test_the_settlement_report_lists_what_settled_that_day(base: str) -> None:
    day = datetime.now(UTC).date() + timedelta(days=60)
    start = datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp()
    set_clock(base, start)
    psp = psp_at(base)
    kept, small = new_payment(), new_payment()

    async def scenario() -> tuple[bytes, bytes, PspChargeResult]:
        sale = await charge(psp, kept, amount=2500)
        await charge(psp, small, amount=500)
        voided = await charge(psp, new_payment(), amount=900)
        assert sale.psp_reference is not None and voided.psp_reference is not None
        await psp.refund(
            payment_id="x", psp_reference=voided.psp_reference, amount=900, idempotency_key=uuid.uuid4().hex
        )
        set_clock(base, start + DAY_S)
        await psp.refund(
            payment_id=kept,
            psp_reference=sale.psp_reference,
            amount=500,
            idempotency_key=uuid.uuid4().hex,
            refund_id="rf-report",
        )
        set_clock(base, start + 2 * DAY_S)
        first = b"".join([c async for c in psp.settlement_report(day, REPORT_COLUMNS).chunks()])
        columns = [
            *REPORT_COLUMNS,
            "payment_metadata[payray_payment_id]",
            "refund_metadata[payray_refund_id]",
        ]
        second = b"".join([c async for c in psp.settlement_report(day + timedelta(days=1), columns).chunks()])
        return first, second, sale

    first, second, sale = run(closing(psp, scenario()))
    rows = list(csv.DictReader(io.StringIO(first.decode())))
    assert list(rows[0]) == list(REPORT_COLUMNS)
    assert sorted((r["reporting_category"], r["gross"], r["fee"], r["net"]) for r in rows) == [
        ("charge", "25.00", "1.14", "23.86"),
        ("charge", "5.00", "0.62", "4.38"),
    ]
    kept_row = next(r for r in rows if r["source_id"] == sale.psp_reference)
    assert kept_row["payment_intent_id"] == kept_row["charge_id"] == sale.psp_reference
    assert kept_row["created_utc"].startswith(day.isoformat()) and kept_row["currency"] == "usd"
    refunds = list(csv.DictReader(io.StringIO(second.decode())))
    assert [(r["reporting_category"], r["gross"], r["payment_intent_id"]) for r in refunds] == [
        ("refund", "-5.00", sale.psp_reference)
    ]
    assert refunds[0]["payment_metadata[payray_payment_id]"] == kept
    assert refunds[0]["refund_metadata[payray_refund_id]"] == "rf-report"


def test_the_report_of_the_emulators_csv_route_matches_the_adapters(base: str) -> None:
    day = datetime.now(UTC).date() + timedelta(days=70)
    start = datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp()
    set_clock(base, start)
    psp = psp_at(base)

    async def scenario() -> bytes:
        await charge(psp, new_payment(), amount=4200)
        await charge(psp, new_payment(), amount=1234)
        set_clock(base, start + 2 * DAY_S)
        return b"".join([c async for c in psp.settlement_report(day, REPORT_COLUMNS).chunks()])

    ours = list(csv.DictReader(io.StringIO(run(closing(psp, scenario())).decode())))
    route = httpx.get(f"{base}/_emulator/braintree/settlement_report", params={"date": day.isoformat()}).text
    theirs = [{c: r[c] for c in REPORT_COLUMNS} for r in csv.DictReader(io.StringIO(route))]
    assert ours == theirs and len(ours) == 2


def test_a_day_with_nothing_settled_is_a_header_only(base: str) -> None:
    psp = psp_at(base)

    async def scenario() -> bytes:
        report = psp.settlement_report(date(2001, 1, 1), REPORT_COLUMNS)
        return b"".join([c async for c in report.chunks()])

    assert run(closing(psp, scenario())).decode().strip() == ",".join(REPORT_COLUMNS)
