"""Reconciliation of a day at both PSPs against the emulator: Stripe's report-run API and Braintree's batch
summary, each PSP's report diffed against the ledger rows of the payments made there.

Real sales, refunds and voids are made at the emulator's Braintree personality through ``BraintreePsp`` (the
official SDK), and charges at its Stripe personality through ``StripePsp``, on pinned days; the ledger books
them with their PSP references. Braintree settles a day's transactions when its batch closes at midnight,
so each day is reconciled once the emulator's clock has passed it, as the nightly run does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from ledger.reconcile import KINDS
from psp.braintree.adapter import BraintreePsp
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.emulator.server import EmulatorProcess
from psp.port import PaymentServiceProvider, PspError
from psp.stripe_adapter import StripePsp
from serve_app.flows.reconciliation import Reconciliation, discrepancy_object, run_object
from serve_app.stores import reconciliation as reconciliation_db
from tests.conftest import fresh_database
from tests.integration.recon_fixtures import LedgerDay, Row
from tests.integration.test_reconcile_psp import KEY, book_day, drift

pytestmark = pytest.mark.integration

DAY = date(2026, 5, 19)
NO_DIFFERENCES = dict.fromkeys(KINDS, 0)


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
        client.delete("/_emulator/faults")
        client.delete("/_emulator/settlement/drift")


@pytest.fixture
def db(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def at(control: httpx.Client, day: date, hour: int) -> None:
    """The emulator's clock at ``hour`` of ``day`` (UTC), running."""
    now = datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()
    assert control.post("/_emulator/clock", json={"now": now, "frozen": False}).status_code == 200


def braintree_psp(base: str) -> BraintreePsp:
    return BraintreePsp(DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY, base)


class Braintree:
    """Sales and refunds at the emulator's Braintree, booked in the ledger as the service books them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.n = 0

    def _run(self, work: Any) -> Any:
        async def go() -> Any:
            psp = braintree_psp(self.base)
            try:
                return await work(psp)
            finally:
                await psp.aclose()

        return asyncio.run(go())

    def sale(self, ledger: LedgerDay, amount: int) -> Row:
        self.n += 1
        payment_id = f"py_bt{ledger.day:%m%d}{self.n}"

        async def work(psp: BraintreePsp) -> str:
            result = await psp.capture(
                payment_id=payment_id, amount=amount, currency="usd", payment_method="fake-valid-nonce",
                idempotency_key=f"att-{payment_id}", metadata={},
            )  # fmt: skip
            assert result.status == "captured" and result.psp_reference, result
            return result.psp_reference

        return ledger.charge(amount, psp_reference=self._run(work), psp="braintree")

    def refund(self, ledger: LedgerDay, sale: Row, amount: int) -> str:
        """A refund of ``sale`` (booked on ``ledger``'s day); its PSP reference, the sale's own for a void."""
        self.n += 1

        async def work(psp: BraintreePsp) -> str:
            result = await psp.refund(
                payment_id="-", psp_reference=sale.reference, amount=amount, idempotency_key=f"rf-{self.n}"
            )
            assert result.status == "refunded" and result.refund_reference, result
            return result.refund_reference

        reference: str = self._run(work)
        if reference == sale.reference:
            ledger.void(sale)
        else:
            ledger.refund(sale, amount, psp_reference=reference)
        return reference

    def decline_settlement(self, sale: Row) -> None:
        """Braintree's sandbox declines the sale's settlement: it never reaches a batch."""

        async def work(psp: BraintreePsp) -> None:
            gateway: Any = psp._gateway
            await asyncio.to_thread(gateway.testing.settlement_decline_transaction, sale.reference)

        self._run(work)


def reconcile(db: str, psp_base: str, day: date, *, braintree: bool = True) -> dict[str, Any]:
    """The run as the service runs it (every configured PSP), rendered as the API renders it."""

    async def go() -> dict[str, Any]:
        psps: dict[str, PaymentServiceProvider] = {"stripe": StripePsp(KEY, psp_base)}
        if braintree:
            psps["braintree"] = braintree_psp(psp_base)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            db, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True)
        try:
            return run_object(await Reconciliation(pool, psps).run(day))
        finally:
            await pool.close()
            for psp in psps.values():
                await psp.aclose()

    return asyncio.run(go())


def discrepancies(db: str, run_id: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            rows = await reconciliation_db.list_discrepancies(aconn, None, run_id, 100, None)
        return [discrepancy_object(row) for row in rows]

    return asyncio.run(go())


def test_a_day_with_captures_and_refunds_at_both_psps_reconciles_clean(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    braintree = Braintree(psp_base)
    first, second = LedgerDay(conn, DAY), LedgerDay(conn, DAY + timedelta(days=1))
    book_day(psp_base, control, first, charges=4)
    refunded = braintree.sale(first, 3_000)
    braintree.sale(first, 1_800)
    # the next day: the first day's sales settled at midnight, so a refund is a refund; a sale refunded the
    # day it was made is voided
    book_day(psp_base, control, second, charges=5)
    braintree.refund(second, refunded, 1_000)
    braintree.sale(second, 2_200)
    voided = braintree.sale(second, 1_250)
    assert braintree.refund(second, voided, 1_250) == voided.reference
    at(control, DAY + timedelta(days=2), 1)  # both days' batches have closed

    day1 = reconcile(db, psp_base, DAY)
    assert day1["status"] == "succeeded", day1["error"]
    assert day1["discrepancies"] == NO_DIFFERENCES, discrepancies(db, day1["id"])
    assert list(day1["by_psp"]) == ["stripe", "braintree"]
    stripe, bt = day1["by_psp"]["stripe"], day1["by_psp"]["braintree"]
    assert stripe["psp_rows"] == stripe["ledger_rows"] == stripe["matched"] == 6  # 4 charges, refund, dispute
    assert bt["psp_rows"] == bt["ledger_rows"] == bt["matched"] == 2 and bt["voided"] == 0
    assert day1["psp_rows"] == day1["matched"] == 8
    assert day1["psp_report"] == stripe["psp_report"] == day1["psp_reports"]["stripe"]
    assert day1["psp_reports"]["braintree"] == f"settlement_batch_summary:{DAY.isoformat()}"
    assert bt["settled"]["usd"]["gross"] == 4_800 and bt["settled"]["usd"]["rows"] == 2
    assert bt["settled"]["usd"]["fee"] > 0  # Braintree's fee, as its report says

    day2 = reconcile(db, psp_base, DAY + timedelta(days=1))
    assert day2["discrepancies"] == NO_DIFFERENCES, discrepancies(db, day2["id"])
    bt = day2["by_psp"]["braintree"]
    # the refund and the new sale; the voided sale and its void are reported by neither side
    assert (bt["psp_rows"], bt["ledger_rows"], bt["matched"], bt["voided"]) == (2, 4, 2, 2)
    assert bt["settled"]["usd"]["gross"] == 2_200 - 1_000
    assert day2["settled"]["usd"]["rows"] == day2["by_psp"]["stripe"]["settled"]["usd"]["rows"] + 2

    again = reconcile(db, psp_base, DAY + timedelta(days=1))
    assert again["id"] == day2["id"] and again["attempts"] == 2
    for psp, part in day2["by_psp"].items():  # the same counts and settlement; Stripe runs a new report
        assert {**again["by_psp"][psp], "psp_report": None} == {**part, "psp_report": None}, psp
    assert again["settled"] == day2["settled"]


def test_a_sale_braintree_did_not_settle_is_braintrees_discrepancy_and_stripes_stay_stripes(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    day = DAY + timedelta(days=10)
    braintree = Braintree(psp_base)
    ledger = LedgerDay(conn, day)
    book_day(psp_base, control, ledger, charges=6)
    braintree.sale(ledger, 4_100)
    declined = braintree.sale(ledger, 2_300)
    braintree.decline_settlement(declined)
    [stripe_missing] = drift(control, day, missing_capture=1)
    at(control, day + timedelta(days=1), 1)

    run = reconcile(db, psp_base, day)
    assert run["status"] == "succeeded", run["error"]
    found = {(d["psp_name"], d["kind"], d["reference"]): d for d in discrepancies(db, run["id"])}
    assert set(found) == {
        ("braintree", "missing_at_psp", declined.reference),
        ("stripe", "missing_at_psp", stripe_missing["reference"]),
    }
    filed = found[("braintree", "missing_at_psp", declined.reference)]
    assert filed["psp"] is None and filed["ledger"]["amount"] == 2_300 and filed["category"] == "charge"
    for psp in ("stripe", "braintree"):
        assert run["by_psp"][psp]["discrepancies"] == {**NO_DIFFERENCES, "missing_at_psp": 1}
    assert run["by_psp"]["braintree"]["matched"] == 1
    assert run["discrepancies"] == {**NO_DIFFERENCES, "missing_at_psp": 2}


def test_a_stripe_only_service_reconciles_as_before(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    day = DAY + timedelta(days=20)
    ledger = LedgerDay(conn, day)
    book_day(psp_base, control, ledger, charges=5)
    run = reconcile(db, psp_base, day, braintree=False)
    assert run["status"] == "succeeded" and run["discrepancies"] == NO_DIFFERENCES
    assert run["psp_rows"] == run["ledger_rows"] == run["matched"] == len(ledger.rows)
    assert list(run["by_psp"]) == ["stripe"] and run["psp_reports"] == {"stripe": run["psp_report"]}
    assert run["by_psp"]["stripe"]["settled"] == run["settled"]


def test_braintree_unreachable_fails_the_day_for_both_and_a_rerun_does_it(
    db: str, conn: psycopg.Connection[Any], psp_base: str, control: httpx.Client
) -> None:
    day = DAY + timedelta(days=30)
    braintree = Braintree(psp_base)
    ledger = LedgerDay(conn, day)
    book_day(psp_base, control, ledger, charges=3)
    braintree.sale(ledger, 1_700)
    at(control, day + timedelta(days=1), 1)
    faults = {"psp": "braintree", "error_rate": 1.0, "error_status": 503}
    assert control.post("/_emulator/faults", json=faults).status_code == 200

    with pytest.raises(PspError):
        reconcile(db, psp_base, day)
    stored = conn.execute("SELECT status, error FROM recon_runs WHERE run_date = %s", (day,)).fetchone()
    assert stored is not None and stored[0] == "failed" and stored[1].startswith("braintree: "), stored
    assert conn.execute("SELECT count(*) FROM recon_discrepancies").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM recon_settled").fetchone() == (0,)

    assert control.delete("/_emulator/faults").status_code == 200
    run = reconcile(db, psp_base, day)
    assert run["status"] == "succeeded" and run["attempts"] == 2
    assert run["discrepancies"] == NO_DIFFERENCES and run["by_psp"]["braintree"]["matched"] == 1
