"""Reconciliation in Postgres: each difference found and nothing else, late rows, re-runs, odd reports.

Each test gets its own database: a run carries every earlier day's open discrepancies, so tests sharing one
would see each other's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest

from ledger import store
from ledger.postings import CHART
from ledger.reconcile import KINDS, REPORT_COLUMNS, RunResult, reconcile_day
from payray.money import CURRENCY_EXPONENTS
from tests.conftest import fresh_database
from tests.integration.recon_fixtures import BytesReport, LedgerDay, Row, report_csv

DAY = date(2026, 3, 10)


@pytest.fixture
def db(postgres_server_url: str) -> Iterator[str]:
    with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


@pytest.fixture
def ledger(conn: psycopg.Connection[Any]) -> LedgerDay:
    """Four charges (one in euros), a partial refund and a dispute, booked on ``DAY``."""
    day = LedgerDay(conn, DAY)
    first = day.charge(1_000)
    day.charge(2_500)
    day.charge(99_999)
    day.charge(4_200, "eur")
    day.refund(first, 400)
    day.dispute(first, 300)
    return day


def run(db: str, day: date, data: bytes) -> RunResult:
    async def go() -> RunResult:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            return await reconcile_day(aconn, day, BytesReport(data))

    return asyncio.run(go())


def discrepancies(conn: psycopg.Connection[Any], **where: Any) -> set[tuple[str, str]]:
    sql = "SELECT kind, reference FROM recon_discrepancies"
    if where:
        sql += " WHERE " + " AND ".join(f"{k} = %({k})s" for k in where)
    return {(kind, ref) for kind, ref in conn.execute(sql, where).fetchall()}


def settlements(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM ledger_transactions WHERE kind = 'settlement'").fetchone()
    assert row is not None
    return int(row[0])


def assert_books_balance(conn: psycopg.Connection[Any]) -> None:
    for currency, line in store.trial_balance(conn).items():
        assert line["balanced"], (currency, line)


NO_DIFFERENCES = {"missing_at_psp": 0, "missing_in_ledger": 0, "amount_mismatch": 0, "currency_mismatch": 0}


def test_a_clean_day_matches_every_row_and_settles_charges_and_refunds(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    result = run(db, DAY, report_csv(ledger.rows))
    assert result.status == "succeeded", result.error
    assert (result.psp_rows, result.ledger_rows, result.matched) == (6, 6, 6)
    assert result.discrepancies == NO_DIFFERENCES
    usd = [r for r in ledger.rows if r.currency == "usd" and r.category != "dispute"]
    gross, fee = sum(r.gross for r in usd), sum(r.fee for r in usd)
    assert result.settled["usd"] == {"rows": 4, "gross": gross, "fee": fee, "net": gross - fee}
    assert result.settled["eur"]["rows"] == 1
    assert settlements(conn) == 2 and discrepancies(conn) == set()
    assert_books_balance(conn)
    settled = conn.execute("SELECT count(*) FROM recon_settled").fetchone()
    assert settled == (5,)  # the dispute is matched, not settled


def test_a_compensation_is_matched_to_the_psp_refund_it_made(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    ledger.compensation(ledger.charge(3_300))
    result = run(db, DAY, report_csv(ledger.rows))
    assert result.discrepancies == NO_DIFFERENCES and result.matched == 8


@pytest.mark.parametrize("drift", KINDS)
def test_each_drift_alone_is_found_and_nothing_else(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay, drift: str
) -> None:
    rows, target = drifted(ledger.rows, drift, index=1)
    result = run(db, DAY, report_csv(rows))
    assert result.status == "succeeded", result.error
    assert discrepancies(conn) == {(drift, target)}
    assert result.discrepancies == {**NO_DIFFERENCES, drift: 1}
    assert result.matched == (6 if drift == "missing_in_ledger" else 5)
    assert_books_balance(conn)


def test_mixed_drift_is_found_exactly(db: str, conn: psycopg.Connection[Any], ledger: LedgerDay) -> None:
    rows = list(ledger.rows)
    expected = set()
    for index, drift in ((0, "missing_at_psp"), (1, "amount_mismatch"), (3, "currency_mismatch"),
                         (4, "amount_mismatch"), (None, "missing_in_ledger")):  # fmt: skip
        rows, target = drifted(rows, drift, index)
        expected.add((drift, target))
    result = run(db, DAY, report_csv(rows))
    assert discrepancies(conn) == expected
    assert result.matched == 2 and sum(result.discrepancies.values()) == 5


def drifted(rows: list[Row], drift: str, index: int | None) -> tuple[list[Row], str]:
    """``rows`` with one difference put in (at ``index``), and the reference it concerns."""
    rows = list(rows)
    if drift == "missing_in_ledger":
        stranger = replace(rows[0], bt="txn_stranger", reference="pi_stranger", charge="ch_stranger")
        return [*rows, stranger], stranger.reference
    assert index is not None
    row = rows[index]
    if drift == "missing_at_psp":
        del rows[index]
    elif drift == "amount_mismatch":
        rows[index] = replace(row, gross=row.gross + (7 if row.gross > 0 else -7))
    else:
        rows[index] = replace(row, currency="eur" if row.currency == "usd" else "usd")
    return rows, row.reference


def test_a_row_settled_a_day_late_is_matched_next_day_and_its_discrepancy_resolved(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    late = ledger.rows[2]
    first = run(db, DAY, report_csv([r for r in ledger.rows if r != late]))
    assert discrepancies(conn, status="open") == {("missing_at_psp", late.reference)}
    assert first.discrepancies["missing_at_psp"] == 1

    next_day = LedgerDay(conn, DAY + timedelta(days=1))
    next_day.charge(777)
    moved = replace(late, created=late.created + timedelta(days=1))
    second = run(db, DAY + timedelta(days=1), report_csv([*next_day.rows, moved]))
    assert second.status == "succeeded", second.error
    assert second.discrepancies == NO_DIFFERENCES
    assert (second.psp_rows, second.ledger_rows, second.matched, second.resolved_late) == (2, 1, 2, 1)
    assert discrepancies(conn, status="open") == set()
    row = conn.execute("SELECT resolution, resolved_by_run FROM recon_discrepancies").fetchone()
    assert row == ("matched_late", second.id)
    settled = conn.execute(
        "SELECT run_id FROM recon_settled s JOIN payments p ON p.psp_reference = %s "
        "JOIN ledger_transactions t ON t.external_ref = p.id AND t.id = s.ledger_transaction_id",
        (late.reference,),
    ).fetchone()
    assert settled == (second.id,)

    # Both days again, in either order: nothing more is filed, reopened or settled.
    before = settlements(conn)
    assert (
        run(db, DAY + timedelta(days=1), report_csv([*next_day.rows, moved])).discrepancies == NO_DIFFERENCES
    )
    again = run(db, DAY, report_csv([r for r in ledger.rows if r != late]))
    assert again.discrepancies == NO_DIFFERENCES and again.ledger_rows == 5
    assert discrepancies(conn, status="open") == set()
    assert settlements(conn) == before
    assert_books_balance(conn)


def test_rerunning_a_day_files_and_settles_nothing_twice(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    rows, target = drifted(ledger.rows, "amount_mismatch", index=0)
    report = report_csv(rows)
    first = run(db, DAY, report)
    trial = store.trial_balance(conn)
    second = run(db, DAY, report)
    assert second.id == first.id and second.attempts == 2
    assert (second.matched, second.discrepancies, second.settled) == (
        first.matched,
        first.discrepancies,
        first.settled,
    )
    assert conn.execute("SELECT count(*) FROM recon_discrepancies").fetchone() == (1,)
    assert settlements(conn) == 2 and store.trial_balance(conn) == trial

    # The PSP corrects its report: the re-run settles the newly matched row and retires the discrepancy.
    third = run(db, DAY, report_csv(ledger.rows))
    assert third.discrepancies == NO_DIFFERENCES and third.matched == 6
    assert conn.execute(
        "SELECT status, resolution FROM recon_discrepancies WHERE reference = %s", (target,)
    ).fetchone() == ("resolved", "not_found_on_rerun")
    assert settlements(conn) == 3 and third.settled["usd"]["rows"] == 4
    assert_books_balance(conn)


def test_a_resolved_discrepancy_stays_resolved_on_rerun(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    report = report_csv(ledger.rows[1:])
    run(db, DAY, report)
    conn.execute(
        "UPDATE recon_discrepancies SET status = 'resolved', resolution = 'written_off', resolved_at = now()"
    )
    run(db, DAY, report)
    assert conn.execute("SELECT count(*), min(status) FROM recon_discrepancies").fetchone() == (1, "resolved")


def test_an_empty_day_reports_every_ledger_row_missing_at_the_psp(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    result = run(db, DAY, report_csv([]))
    assert result.status == "succeeded" and result.psp_rows == 0
    assert result.discrepancies == {**NO_DIFFERENCES, "missing_at_psp": 6}
    quiet = run(db, DAY - timedelta(days=30), report_csv([]))
    assert (quiet.status, quiet.psp_rows, quiet.ledger_rows, quiet.discrepancies) == (
        "succeeded",
        0,
        0,
        NO_DIFFERENCES,
    )


def test_an_unknown_currency_is_a_currency_mismatch_not_a_crash(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    rows = list(ledger.rows)
    rows[1] = replace(rows[1], currency="xyz")
    stranger = replace(rows[0], bt="txn_s", reference="pi_s", charge="ch_s", currency="zzz")
    result = run(db, DAY, report_csv([*rows, stranger]))
    assert result.status == "succeeded", result.error
    assert discrepancies(conn) == {("currency_mismatch", rows[1].reference), ("missing_in_ledger", "pi_s")}
    detail = conn.execute(
        "SELECT detail FROM recon_discrepancies WHERE kind = 'currency_mismatch'"
    ).fetchone()
    assert detail is not None and "xyz" in detail[0] and "does not know" in detail[0]


def with_field(line: str, column: str, value: str) -> str:
    fields = line.split(",")
    fields[REPORT_COLUMNS.index(column)] = value
    return ",".join(fields)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (
            lambda lines: [*lines[:2], with_field(lines[2], "gross", "25.0O")],
            'line 3, column gross: "25.0O"',
        ),
        (lambda lines: [*lines[:2], with_field(lines[2], "gross", "NaN")], "line 3: amounts NaN"),
        (lambda lines: [*lines[:2], with_field(lines[2], "created_utc", "2026-02-30 10:00:00")], "line 3"),
        (lambda lines: [*lines[:2], lines[2] + ",extra"], "extra data after last expected column"),
        (lambda lines: [*lines[:2], ",".join(lines[2].split(",")[:4])], "missing data for column"),
        (lambda lines: [lines[0].replace("gross", "amount"), *lines[1:]], "column name mismatch"),
        (lambda lines: [*lines, lines[1]], "2 lines (2 … 8) report charge"),
        (
            lambda lines: [*lines[:2], with_field(lines[2], "gross", "25.005")],
            "more decimals than usd allows",
        ),
        (lambda lines: [*lines[:2], with_field(lines[2], "net", "1.00")], "is not gross"),
        (lambda lines: [], "empty"),
    ],
    ids=[
        "bad-amount",
        "nan",
        "bad-time",
        "extra-column",
        "short-row",
        "wrong-header",
        "repeated",
        "sub-cent",
        "bad-net",
        "empty",
    ],
)
def test_a_malformed_report_fails_the_run_clearly_and_changes_nothing(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay, mangle: Any, message: str
) -> None:
    lines = report_csv(ledger.rows).decode().splitlines()
    data = "".join(line + "\n" for line in mangle(lines)).encode()
    result = run(db, DAY, data)
    assert result.status == "failed" and result.error is not None
    assert message in result.error, result.error
    stored = conn.execute("SELECT status, error FROM recon_runs WHERE id = %s", (result.id,)).fetchone()
    assert stored == ("failed", result.error)
    assert discrepancies(conn) == set() and settlements(conn) == 0
    assert conn.execute("SELECT count(*) FROM recon_settled").fetchone() == (0,)
    # The same day with a good report then succeeds.
    assert run(db, DAY, report_csv(ledger.rows)).status == "succeeded"


def test_the_database_knows_the_chart_and_the_currencies_the_code_knows(
    conn: psycopg.Connection[Any],
) -> None:
    """The SQL copies of ``ledger.postings.CHART`` and ``payray.money.CURRENCY_EXPONENTS`` match them."""
    chart = dict(conn.execute("SELECT name, normal_side || '/' || scope FROM account_types").fetchall())
    assert chart == {name: f"{side}/{scope}" for name, (side, scope) in CHART.items()}
    assert dict(conn.execute("SELECT code, exponent FROM currencies").fetchall()) == CURRENCY_EXPONENTS
