"""Reconciliation in Postgres: each difference found and nothing else, late rows, re-runs, odd reports.

Each test gets its own database: a run carries every earlier day's open discrepancies, so tests sharing one
would see each other's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ledger import store
from ledger.migrate import CREATE_TRACKING_TABLE, available_migrations, migrate
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


# -- two PSPs: each report against the ledger rows of its own payments ---------------------------------------


def run_psps(db: str, day: date, reports: dict[str, bytes]) -> RunResult:
    async def go() -> RunResult:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as aconn:
            return await reconcile_day(aconn, day, {psp: BytesReport(data) for psp, data in reports.items()})

    return asyncio.run(go())


def by_psp(conn: psycopg.Connection[Any], **where: Any) -> set[tuple[str, str, str]]:
    sql = "SELECT psp, kind, reference FROM recon_discrepancies"
    if where:
        sql += " WHERE " + " AND ".join(f"{k} = %({k})s" for k in where)
    return {(psp, kind, ref) for psp, kind, ref in conn.execute(sql, where).fetchall()}


@pytest.fixture
def both(ledger: LedgerDay) -> LedgerDay:
    """``ledger``'s Stripe day plus Braintree's: three sales (the first refunded in part, the last voided the
    same day) and one in euros."""
    first = ledger.charge(1_500, psp_reference="bt1sale", psp="braintree")
    ledger.charge(2_750, psp_reference="bt2sale", psp="braintree")
    ledger.charge(900, "eur", psp_reference="bt3sale", psp="braintree")
    ledger.refund(first, 500, psp_reference="bt1credit")
    ledger.void(ledger.charge(1_250, psp_reference="bt4sale", psp="braintree"))
    return ledger


def reports_of(ledger: LedgerDay, **rows: list[Row]) -> dict[str, bytes]:
    """Each PSP's report of the day, or the rows given for one."""
    return {psp: report_csv(rows.get(psp, ledger.rows_at(psp))) for psp in ("stripe", "braintree")}


def test_a_lone_report_is_stripes_and_the_run_says_so(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    result = run(db, DAY, report_csv(ledger.rows))
    assert list(result.by_psp) == ["stripe"]
    stripe = result.by_psp["stripe"]
    assert (stripe.psp_report, stripe.psp_rows, stripe.matched, stripe.settled) == (
        "frr_test", 6, 6, result.settled
    )  # fmt: skip
    stored = conn.execute("SELECT psp_report, by_psp -> 'stripe' ->> 'matched' FROM recon_runs").fetchone()
    assert stored == ("frr_test", "6")
    assert conn.execute("SELECT DISTINCT psp FROM recon_settled").fetchall() == [("stripe",)]


def test_both_psps_reconcile_clean_each_against_its_own_payments(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    result = run_psps(db, DAY, reports_of(both))
    assert result.status == "succeeded", result.error
    assert result.discrepancies == NO_DIFFERENCES and by_psp(conn) == set()
    stripe, braintree = result.by_psp["stripe"], result.by_psp["braintree"]
    assert (stripe.psp_rows, stripe.ledger_rows, stripe.matched, stripe.voided) == (6, 6, 6, 0)
    # the voided sale and its void are the day's ledger rows, reported by neither side
    assert (braintree.psp_rows, braintree.ledger_rows, braintree.matched, braintree.voided) == (4, 6, 4, 2)
    assert (result.psp_rows, result.ledger_rows, result.matched) == (10, 12, 10)
    bt_usd = [r for r in both.rows_at("braintree") if r.currency == "usd"]
    gross, fee = sum(r.gross for r in bt_usd), sum(r.fee for r in bt_usd)
    assert braintree.settled["usd"] == {"rows": 3, "gross": gross, "fee": fee, "net": gross - fee}
    assert result.settled["usd"]["rows"] == stripe.settled["usd"]["rows"] + 3 == 7
    assert result.settled["eur"]["gross"] == stripe.settled["eur"]["gross"] + 900
    # one posting per PSP and currency, Stripe's under the reference it always had
    refs = {row[0] for row in conn.execute(
        "SELECT external_ref FROM ledger_transactions WHERE kind = 'settlement'"
    ).fetchall()}  # fmt: skip
    assert refs == {f"{result.id}/1/usd", f"{result.id}/1/eur",
                    f"{result.id}/1/braintree/usd", f"{result.id}/1/braintree/eur"}  # fmt: skip
    assert dict(conn.execute("SELECT psp, count(*) FROM recon_settled GROUP BY psp").fetchall()) == {
        "stripe": 5,
        "braintree": 4,
    }
    assert_books_balance(conn)


def test_a_braintree_capture_missing_from_its_report_is_braintrees_alone(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    missing = both.rows_at("braintree")[1]
    result = run_psps(
        db, DAY, reports_of(both, braintree=[r for r in both.rows_at("braintree") if r != missing])
    )
    assert by_psp(conn) == {("braintree", "missing_at_psp", missing.reference)}
    assert result.by_psp["braintree"].discrepancies == {**NO_DIFFERENCES, "missing_at_psp": 1}
    assert result.by_psp["stripe"].discrepancies == NO_DIFFERENCES
    assert result.by_psp["stripe"].matched == 6
    assert result.discrepancies == {**NO_DIFFERENCES, "missing_at_psp": 1}
    assert_books_balance(conn)


def test_an_amount_mismatch_at_braintree_is_filed_as_braintrees(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    rows, target = drifted(both.rows_at("braintree"), "amount_mismatch", index=0)
    result = run_psps(db, DAY, reports_of(both, braintree=rows))
    assert by_psp(conn) == {("braintree", "amount_mismatch", target)}
    assert result.by_psp["stripe"].discrepancies == NO_DIFFERENCES
    row = conn.execute(
        "SELECT psp_gross, ledger_amount FROM recon_discrepancies WHERE reference = %s", (target,)
    ).fetchone()
    assert row == (1_507, 1_500)


def test_a_row_in_the_other_psps_report_is_never_matched_across(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    """Braintree's sale in Stripe's report: Stripe reports a row the ledger does not have at Stripe, and
    Braintree's report lacks a sale the ledger has at Braintree."""
    moved = both.rows_at("braintree")[0]
    result = run_psps(db, DAY, reports_of(
        both,
        stripe=[*both.rows_at("stripe"), replace(moved, psp="stripe")],
        braintree=[r for r in both.rows_at("braintree") if r != moved],
    ))  # fmt: skip
    assert by_psp(conn) == {
        ("stripe", "missing_in_ledger", moved.reference),
        ("braintree", "missing_at_psp", moved.reference),
    }
    assert result.by_psp["stripe"].matched == 6 and result.by_psp["braintree"].matched == 3
    api_row = conn.execute(
        "SELECT psp, psp_balance_transaction, ledger_transaction_id FROM recon_discrepancies "
        "WHERE kind = 'missing_in_ledger'"
    ).fetchone()
    assert api_row is not None and api_row[:2] == ("stripe", moved.bt) and api_row[2] is None


def test_a_bad_braintree_report_fails_the_whole_run_and_names_braintree(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    lines = report_csv(both.rows_at("braintree")).decode().splitlines()
    bad = "".join(line + "\n" for line in [*lines[:2], with_field(lines[2], "net", "1.00")]).encode()
    result = run_psps(db, DAY, {"stripe": report_csv(both.rows_at("stripe")), "braintree": bad})
    assert result.status == "failed" and result.error is not None
    assert result.error.startswith("braintree: settlement report rejected: line 3:"), result.error
    assert by_psp(conn) == set() and settlements(conn) == 0
    assert conn.execute("SELECT count(*) FROM recon_settled").fetchone() == (0,)
    unreadable = run_psps(db, DAY, {"stripe": report_csv(both.rows_at("stripe")), "braintree": b"a,b\n1,2\n"})
    assert unreadable.error is not None and unreadable.error.startswith(
        "braintree: settlement report rejected"
    )
    assert run_psps(db, DAY, reports_of(both)).status == "succeeded"


def test_rerunning_a_two_psp_day_files_and_settles_nothing_twice(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    missing = both.rows_at("braintree")[0]
    short = reports_of(both, braintree=[r for r in both.rows_at("braintree") if r != missing])
    first = run_psps(db, DAY, short)
    trial = store.trial_balance(conn)
    second = run_psps(db, DAY, short)
    assert second.id == first.id and second.attempts == 2
    assert second.by_psp == first.by_psp and second.settled == first.settled
    assert store.trial_balance(conn) == trial and settlements(conn) == 4
    assert by_psp(conn, status="open") == {("braintree", "missing_at_psp", missing.reference)}

    # Braintree's corrected report: the re-run settles the sale and retires Braintree's discrepancy.
    third = run_psps(db, DAY, reports_of(both))
    assert third.discrepancies == NO_DIFFERENCES and by_psp(conn, status="open") == set()
    assert third.by_psp["braintree"].settled["usd"]["rows"] == 3
    assert third.by_psp["stripe"].settled == first.by_psp["stripe"].settled
    assert settlements(conn) == 5
    assert_books_balance(conn)


def test_a_braintree_sale_settled_a_day_late_is_matched_at_braintree_only(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    late = both.rows_at("braintree")[1]
    run_psps(db, DAY, reports_of(both, braintree=[r for r in both.rows_at("braintree") if r != late]))
    moved = replace(late, created=late.created + timedelta(days=1))

    # the next day Stripe reports it: not Braintree's sale, so it stays missing there
    next_day = LedgerDay(conn, DAY + timedelta(days=1))
    wrong = run_psps(db, next_day.day, {"stripe": report_csv([replace(moved, psp="stripe")]),
                                        "braintree": report_csv([])})  # fmt: skip
    assert wrong.resolved_late == 0
    assert by_psp(conn, status="open") == {
        ("braintree", "missing_at_psp", late.reference),
        ("stripe", "missing_in_ledger", late.reference),
    }
    # corrected: Braintree's report of the next day has it
    right = run_psps(db, next_day.day, {"stripe": report_csv([]), "braintree": report_csv([moved])})
    assert right.by_psp["braintree"].resolved_late == 1 and right.by_psp["stripe"].resolved_late == 0
    assert by_psp(conn, status="open") == set()
    assert right.by_psp["braintree"].settled["usd"]["rows"] == 1
    assert_books_balance(conn)


def test_ledger_rows_at_a_psp_without_a_report_are_missing_there(
    db: str, conn: psycopg.Connection[Any], both: LedgerDay
) -> None:
    result = run(db, DAY, report_csv(both.rows_at("stripe")))
    assert result.by_psp["stripe"].discrepancies == NO_DIFFERENCES
    braintree = result.by_psp["braintree"]
    assert braintree.psp_report is None and braintree.voided == 2
    assert braintree.discrepancies == {**NO_DIFFERENCES, "missing_at_psp": 4}
    assert {psp for psp, _, _ in by_psp(conn)} == {"braintree"}


def test_a_void_the_psp_reported_or_of_another_amount_stays_a_difference(
    db: str, conn: psycopg.Connection[Any], ledger: LedgerDay
) -> None:
    sale = ledger.charge(1_000, psp_reference="btsale", psp="braintree")
    ledger.refund(sale, 400, psp_reference="btsale")  # not the whole sale: not a void
    result = run_psps(db, DAY, {"stripe": report_csv(ledger.rows_at("stripe")), "braintree": report_csv([])})
    assert result.by_psp["braintree"].voided == 0
    assert by_psp(conn) == {("braintree", "missing_at_psp", "btsale")}
    assert result.by_psp["braintree"].discrepancies["missing_at_psp"] == 2


def test_the_migration_files_earlier_runs_under_stripe(postgres_server_url: str) -> None:
    """Runs and discrepancies from before there was a second PSP were Stripe's, and read as such."""
    with database_before(postgres_server_url, PER_PSP) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO recon_runs (id, run_date, status, psp_report, psp_rows, ledger_rows, matched,
                                       missing_at_psp, settled)
               VALUES ('recon_old', '2026-01-05', 'succeeded', 'frr_old', 3, 3, 2, 1,
                       '{"usd": {"rows": 2, "gross": 300, "fee": 20, "net": 280}}'),
                      ('recon_never', '2026-01-06', 'failed', NULL, 0, 0, 0, 0, '{}')"""
        )
        conn.execute(
            """INSERT INTO recon_discrepancies (id, run_id, run_date, kind, category, reference)
               VALUES ('dp_old', 'recon_old', '2026-01-05', 'missing_at_psp', 'charge', 'pi_old')"""
        )
        conn.execute("INSERT INTO recon_settled VALUES ('txn_old', 'recon_old', 'txn_bt', 100, 3, 'usd')")
        migrate(url)
        assert conn.execute("SELECT psp FROM recon_discrepancies").fetchone() == ("stripe",)
        assert conn.execute("SELECT psp FROM recon_settled").fetchone() == ("stripe",)
        runs: dict[str, Any] = dict(conn.execute("SELECT id, by_psp FROM recon_runs").fetchall())
        assert runs["recon_never"] == {}
        assert runs["recon_old"] == {"stripe": {
            "psp_report": "frr_old", "psp_rows": 3, "ledger_rows": 3, "matched": 2,
            "discrepancies": {**NO_DIFFERENCES, "missing_at_psp": 1}, "resolved_late": 0,
            "settled": {"usd": {"rows": 2, "gross": 300, "fee": 20, "net": 280}},
        }}  # fmt: skip


PER_PSP = 18  # the migration that files reconciliation per PSP


@contextmanager
def database_before(postgres_server_url: str, version: int) -> Iterator[str]:
    """A new database migrated up to, not including, migration ``version``."""
    name = f"payray_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(postgres_server_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_TRACKING_TABLE)
        for number, migration, sql in available_migrations():
            if number < version:
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (number, migration)
                )
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
