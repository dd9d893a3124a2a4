"""Reading reconciliation runs and the discrepancy queue, and resolving a discrepancy by hand."""

from __future__ import annotations

from datetime import date
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from payray.errors import InvalidRequest, NotFound

RUN_COLUMNS = (
    "id, run_date, status, attempts, psp_report, psp_rows, ledger_rows, matched, missing_at_psp, "
    "missing_in_ledger, amount_mismatch, currency_mismatch, resolved_late, settled, error, started_at, "
    "finished_at, by_psp"
)
DISCREPANCY_COLUMNS = (
    "id, run_id, run_date, psp, kind, category, reference, psp_balance_transaction, psp_gross, psp_fee, "
    "psp_currency, psp_created, report_line, ledger_transaction_id, ledger_amount, ledger_currency, "
    "ledger_posting_date, detail, status, resolution, note, resolved_by_run, resolved_at, created_at"
)

Row = dict[str, Any]


async def load_run(conn: AsyncConnection[Any], run_id: str) -> Row | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {RUN_COLUMNS} FROM recon_runs WHERE id = %s", (run_id,))
    return await cur.fetchone()


async def run_of_day(conn: AsyncConnection[Any], day: date) -> Row | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT {RUN_COLUMNS} FROM recon_runs WHERE run_date = %s", (day,))
    return await cur.fetchone()


async def latest_reconciled_day(conn: AsyncConnection[Any]) -> date | None:
    cur = await conn.execute("SELECT max(run_date) FROM recon_runs WHERE status = 'succeeded'")
    row = await cur.fetchone()
    return row[0] if row else None


async def list_runs(conn: AsyncConnection[Any], limit: int, after: str | None) -> list[Row]:
    """Latest day first, after the run ``after`` when given."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""SELECT {RUN_COLUMNS} FROM recon_runs
             WHERE %(after)s::text IS NULL
                OR run_date < (SELECT run_date FROM recon_runs WHERE id = %(after)s)
             ORDER BY run_date DESC LIMIT %(limit)s""",
        {"after": after, "limit": limit},
    )
    return await cur.fetchall()


async def load_discrepancy(conn: AsyncConnection[Any], discrepancy_id: str) -> Row | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {DISCREPANCY_COLUMNS} FROM recon_discrepancies WHERE id = %s",
        (discrepancy_id,),
    )
    return await cur.fetchone()


async def list_discrepancies(
    conn: AsyncConnection[Any], status: str | None, run_id: str | None, limit: int, after: str | None
) -> list[Row]:
    """Newest first (ids sort by creation within a run, runs by date), after ``after`` when given."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        where.append("status = %(status)s")
        params["status"] = status
    if run_id is not None:
        where.append("run_id = %(run)s")
        params["run"] = run_id
    if after is not None:
        where.append(
            "(created_at, id) < (SELECT created_at, id FROM recon_discrepancies WHERE id = %(after)s)"
        )
        params["after"] = after
    sql = (
        f"SELECT {DISCREPANCY_COLUMNS} FROM recon_discrepancies"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql, params)
    return await cur.fetchall()


async def resolve(conn: AsyncConnection[Any], discrepancy_id: str, resolution: str, note: str) -> Row:
    """Close an open discrepancy with a person's resolution and note; a resolved one is left as it is."""
    updated = await conn.execute(
        """UPDATE recon_discrepancies
              SET status = 'resolved', resolution = %s, note = %s, resolved_at = now()
            WHERE id = %s AND status = 'open'""",
        (resolution, note, discrepancy_id),
    )
    found = await load_discrepancy(conn, discrepancy_id)
    if found is None:
        raise NotFound(f"No such discrepancy: '{discrepancy_id}'", param="id")
    if updated.rowcount == 0:
        raise InvalidRequest(
            f"Discrepancy {discrepancy_id} is already resolved ({found['resolution']}).",
            code="discrepancy_already_resolved",
        )
    return found


async def open_counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    """Open discrepancies by kind: what is waiting for a person."""
    cur = await conn.execute(
        "SELECT kind, count(*) FROM recon_discrepancies WHERE status = 'open' GROUP BY kind"
    )
    return {kind: int(n) for kind, n in await cur.fetchall()}
