"""Reconciliation against the PSP emulator's own settlement report, scored against the drift it injected.

Real charges, refunds and a dispute are made at the emulator through the Stripe adapter (the ``stripe`` SDK)
on a pinned day and booked in a fresh ledger with their PSP references; the emulator is told to drift its
report; the run streams the report through the report-run API. Every injected difference must be found and
nothing else: recall and precision both 100 %.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from ledger.reconcile import KINDS, REPORT_COLUMNS, RunResult, reconcile_day
from psp.emulator.server import EmulatorProcess
from psp.stripe_adapter import StripePsp
from tests.conftest import fresh_database
from tests.integration.recon_fixtures import LedgerDay

DAY = date(2026, 4, 14)
KEY = "sk_test_recon"
#: what each drift the emulator injects must show up as in our review queue
EXPECTED_KIND = {
    "missing_capture": "missing_at_psp",
    "late_settlement": "missing_at_psp",
    "unknown_row": "missing_in_ledger",
    "amount_mismatch": "amount_mismatch",
    "currency_mismatch": "currency_mismatch",
}


@pytest.fixture(scope="module")
def psp_base() -> Iterator[str]:
    with EmulatorProcess(None, api_key=KEY) as process:
        assert process.url is not None
        yield process.url


@pytest.fixture
def control(psp_base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=psp_base, timeout=30) as client:
        assert client.post("/_emulator/reset").status_code == 200
        yield client


@pytest.fixture
def db(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def pin_clock(control: httpx.Client, day: date) -> None:
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    assert control.post("/_emulator/clock", json={"now": noon, "frozen": False}).status_code == 200


def book_day(psp_base: str, control: httpx.Client, ledger: LedgerDay, charges: int = 12) -> None:
    """Charges at the PSP on the ledger's day (some partly refunded, the first disputed), booked alike."""
    pin_clock(control, ledger.day)

    async def at_psp() -> list[tuple[int, str, str, list[tuple[int, str]]]]:
        psp = StripePsp(KEY, psp_base)
        made = []
        try:
            for i in range(charges):
                amount, currency = 1_000 + 137 * i, "eur" if i % 5 == 4 else "usd"
                payment_id = f"py_{uuid.uuid4().hex[:12]}"
                result = await psp.capture(
                    payment_id=payment_id, amount=amount, currency=currency, payment_method="pm_card_visa",
                    idempotency_key=payment_id, metadata={},
                )  # fmt: skip
                assert result.status == "captured" and result.psp_reference
                refunds = []
                if i % 4 == 1:
                    refund = await psp.refund(
                        payment_id=payment_id,
                        psp_reference=result.psp_reference,
                        amount=amount // 3,
                        idempotency_key=f"r-{payment_id}",
                    )
                    assert refund.refund_reference
                    refunds.append((amount // 3, refund.refund_reference))
                made.append((amount, currency, result.psp_reference, refunds))
        finally:
            await psp.aclose()
        return made

    for i, (amount, currency, pi, refunds) in enumerate(asyncio.run(at_psp())):
        charge = ledger.charge(amount, currency, psp_reference=pi)
        for refunded, psp_refund in refunds:
            ledger.refund(charge, refunded, psp_reference=psp_refund)
        if i == 0:
            opened = control.post("/_emulator/disputes", json={"payment_intent": pi, "amount": 250})
            assert opened.status_code == 200, opened.text
            ledger.dispute(charge, 250, psp_reference=opened.json()["id"])


def reconcile(db: str, psp_base: str, day: date) -> RunResult:
    async def go() -> RunResult:
        psp = StripePsp(KEY, psp_base)
        try:
            async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
                return await reconcile_day(aconn, day, psp.settlement_report(day, REPORT_COLUMNS))
        finally:
            await psp.aclose()

    result = asyncio.run(go())
    assert result.status == "succeeded", result.error
    return result


def drift(control: httpx.Client, day: date, **counts: int) -> list[dict[str, Any]]:
    answer = control.post("/_emulator/settlement/drift", json={"date": day.isoformat(), "seed": 7, **counts})
    assert answer.status_code == 200, answer.text
    injections: list[dict[str, Any]] = answer.json()["injections"]
    assert len(injections) == sum(counts.values())
    return injections


def found(conn: psycopg.Connection[Any], day: date, status: str = "open") -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT kind, reference FROM recon_discrepancies WHERE run_date = %s AND status = %s", (day, status)
    ).fetchall()
    return {(kind, reference) for kind, reference in rows}


def expected(injections: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(EXPECTED_KIND[i["kind"]], i["reference"]) for i in injections}


def test_a_clean_report_matches_the_ledger_exactly(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    ledger = LedgerDay(conn, DAY)
    book_day(psp_base, control, ledger)
    result = reconcile(db, psp_base, DAY)
    assert result.discrepancies == dict.fromkeys(KINDS, 0)
    assert result.psp_rows == result.ledger_rows == result.matched == len(ledger.rows) == 16
    assert result.settled["usd"]["rows"] + result.settled["eur"]["rows"] == 15  # all but the dispute


@pytest.mark.parametrize("kind", sorted(EXPECTED_KIND))
def test_each_injected_drift_alone_is_found_and_nothing_else(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client, kind: str
) -> None:
    ledger = LedgerDay(conn, DAY)
    book_day(psp_base, control, ledger)
    injections = drift(control, DAY, **{kind: 2})
    result = reconcile(db, psp_base, DAY)
    assert found(conn, DAY) == expected(injections)
    assert sum(result.discrepancies.values()) == 2


def test_mixed_drift_is_found_with_full_recall_and_precision(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    ledger = LedgerDay(conn, DAY)
    book_day(psp_base, control, ledger, charges=30)
    injections = drift(
        control,
        DAY,
        missing_capture=2,
        unknown_row=2,
        amount_mismatch=3,
        currency_mismatch=2,
        late_settlement=2,
    )
    result = reconcile(db, psp_base, DAY)
    assert found(conn, DAY) == expected(injections)
    assert sum(result.discrepancies.values()) == len(injections) == 11


def test_late_settlement_is_matched_the_next_day_and_its_discrepancy_resolved(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    ledger = LedgerDay(conn, DAY)
    book_day(psp_base, control, ledger)
    late = drift(control, DAY, late_settlement=2)
    first = reconcile(db, psp_base, DAY)
    assert found(conn, DAY) == expected(late) and first.discrepancies["missing_at_psp"] == 2

    next_day = LedgerDay(conn, DAY + timedelta(days=1))
    book_day(psp_base, control, next_day, charges=3)
    second = reconcile(db, psp_base, DAY + timedelta(days=1))
    assert second.discrepancies == dict.fromkeys(KINDS, 0)
    assert second.resolved_late == 2 and second.psp_rows == second.ledger_rows + 2
    assert found(conn, DAY) == set() and found(conn, DAY, "resolved") == expected(late)
    again = reconcile(db, psp_base, DAY + timedelta(days=1))
    assert again.matched == second.matched and again.discrepancies == second.discrepancies
