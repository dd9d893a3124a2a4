"""Running a day's reconciliation against each PSP's report, and the API's view of runs and discrepancies."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from ledger.reconcile import KINDS, REPORT_COLUMNS, RunResult, reconcile_day
from psp.port import PaymentServiceProvider
from serve_app.stores import reconciliation as reconciliation_db


class Reconciliation:
    """Streams every configured PSP's settlement report for a day into ``ledger.reconcile`` on one pooled
    connection: one run covers them all, so a day is reconciled for every PSP or, when one's report fails,
    for none (and is tried again whole)."""

    def __init__(self, pool: AsyncConnectionPool[Any], psps: Mapping[str, PaymentServiceProvider]) -> None:
        assert psps, "a reconciliation reads at least one PSP's report"
        self._pool = pool
        self._psps = dict(psps)

    async def run(self, day: date) -> dict[str, Any]:
        """The run's row as stored (``run_object`` renders it); a failed run is an answer, not an error."""
        async with self._pool.connection() as conn:
            reports = {name: psp.settlement_report(day, REPORT_COLUMNS) for name, psp in self._psps.items()}
            result: RunResult = await reconcile_day(conn, day, reports)
            row = await reconciliation_db.load_run(conn, result.id)
        assert row is not None
        return row


def _timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _psp_part(part: dict[str, Any]) -> dict[str, Any]:
    """One PSP's counts as stored, every field present (a run stored before one was added lacks it)."""
    return {
        "psp_report": part.get("psp_report"),
        "psp_rows": part.get("psp_rows", 0),
        "ledger_rows": part.get("ledger_rows", 0),
        "matched": part.get("matched", 0),
        "voided": part.get("voided", 0),
        "discrepancies": {kind: part.get("discrepancies", {}).get(kind, 0) for kind in KINDS},
        "resolved_late": part.get("resolved_late", 0),
        "settled": part.get("settled", {}),
    }


def run_object(row: dict[str, Any]) -> dict[str, Any]:
    """The totals over the run's PSPs keep their meaning (``psp_report`` is Stripe's report); ``by_psp`` and
    ``psp_reports`` give each PSP's part."""
    by_psp = {name: _psp_part(part) for name, part in (row.get("by_psp") or {}).items()}
    return {
        "id": row["id"],
        "object": "reconciliation_run",
        "date": row["run_date"].isoformat(),
        "status": row["status"],
        "attempts": row["attempts"],
        "psp_report": row["psp_report"],
        "psp_rows": row["psp_rows"],
        "ledger_rows": row["ledger_rows"],
        "matched": row["matched"],
        "discrepancies": {kind: row[kind] for kind in KINDS},
        "resolved_late": row["resolved_late"],
        "settled": row["settled"],
        "error": row["error"],
        "started_at": _timestamp(row["started_at"]),
        "finished_at": _timestamp(row["finished_at"]),
        "psp_reports": {name: part["psp_report"] for name, part in by_psp.items()},
        "by_psp": by_psp,
    }


def discrepancy_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "reconciliation_discrepancy",
        "run": row["run_id"],
        "date": row["run_date"].isoformat(),
        "kind": row["kind"],
        "psp_name": row["psp"],
        "category": row["category"],
        "reference": row["reference"],
        "detail": row["detail"],
        "psp": None
        if row["psp_balance_transaction"] is None
        else {
            "balance_transaction": row["psp_balance_transaction"],
            "gross": row["psp_gross"],
            "fee": row["psp_fee"],
            "currency": row["psp_currency"],
            "created": _timestamp(row["psp_created"]),
            "report_line": row["report_line"],
        },
        "ledger": None
        if row["ledger_transaction_id"] is None
        else {
            "transaction": row["ledger_transaction_id"],
            "amount": row["ledger_amount"],
            "currency": row["ledger_currency"],
            "posting_date": row["ledger_posting_date"].isoformat(),
        },
        "status": row["status"],
        "resolution": row["resolution"],
        "note": row["note"],
        "resolved_by_run": row["resolved_by_run"],
        "resolved_at": _timestamp(row["resolved_at"]),
        "created": _timestamp(row["created_at"]),
    }
