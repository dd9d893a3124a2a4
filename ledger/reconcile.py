"""One day's reconciliation with the PSP's settlement report, done by Postgres.

The report is streamed into a temporary staging table with ``COPY`` (Python holds one chunk at a time),
checked, and diffed against the ledger's captures, refunds and dispute movements of the day in one full outer
join on the PSP reference. Differences go to the review queue (``recon_discrepancies``); matched captures and
refunds are marked settled once (``recon_settled``) and booked as one settlement posting per currency: bank
cash and PSP fees against the PSP receivable.

Everything a run writes commits in one transaction, so a run that fails leaves nothing half done, and running
a day again files nothing twice and settles nothing twice. A row the PSP settled a day late is matched by the
next day's run: open ``missing_*`` discrepancies of earlier days are carried into each run's join, and
resolved when their counterpart turns up.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from ledger.postings import settlement_posting
from ledger.store import post_batch_async
from payray.ids import new_id
from payray.money import Money

#: The report columns a run asks the PSP for, in the order ``COPY … HEADER MATCH`` requires them.
REPORT_COLUMNS = (
    "balance_transaction_id",
    "created_utc",
    "reporting_category",
    "currency",
    "gross",
    "fee",
    "net",
    "source_id",
    "charge_id",
    "payment_intent_id",
)
KINDS = ("missing_at_psp", "missing_in_ledger", "amount_mismatch", "currency_mismatch")
#: The house-account balance shard settlement postings use: none of the ledger writers' (0 … writers - 1).
RECON_SHARD = 900
LOCK_NAMESPACE = 0x7265636F  # "reco": pg_advisory_xact_lock(namespace, day) serializes runs of one day
PROBLEMS_SHOWN = 5


class ReportRejected(Exception):
    """The report cannot be reconciled as it is (unreadable, malformed, contradictory): the run fails."""


@dataclass(frozen=True)
class RunResult:
    id: str
    run_date: date
    status: str
    attempts: int
    psp_rows: int = 0
    ledger_rows: int = 0
    matched: int = 0
    discrepancies: dict[str, int] = field(default_factory=dict)
    resolved_late: int = 0
    settled: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    #: seconds spent in each step of the run (before its commit)
    phases: dict[str, float] = field(default_factory=dict)


class Phases:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


#: The staging table's type for each report column: COPY itself refuses a malformed amount or time, naming
#: the line and the column.
COLUMN_TYPES = {"created_utc": "timestamp", "gross": "numeric", "fee": "numeric", "net": "numeric"}

CREATE_STAGING = """
CREATE TEMP TABLE recon_report (
    line_no bigint GENERATED ALWAYS AS IDENTITY,
    {columns}
) ON COMMIT DROP
""".format(columns=",\n    ".join(f"{name} {COLUMN_TYPES.get(name, 'text')}" for name in REPORT_COLUMNS))

COPY_REPORT = "COPY recon_report ({columns}) FROM STDIN WITH (FORMAT csv, HEADER MATCH)".format(
    columns=", ".join(REPORT_COLUMNS)
)

# The first problems of each row, in report order (line 1 is the header).
ROW_PROBLEMS = r"""
SELECT line_no + 1 AS line, problem
  FROM (SELECT r.line_no,
               CASE
                 WHEN coalesce(r.balance_transaction_id, '') = '' THEN 'no balance_transaction_id'
                 WHEN coalesce(r.reporting_category, '') = '' THEN 'no reporting_category'
                 WHEN r.created_utc IS NULL THEN 'no created_utc'
                 WHEN r.gross IS NULL OR r.fee IS NULL OR r.net IS NULL THEN 'no gross, fee or net'
                 WHEN NOT (abs(r.gross) < 1e15 AND abs(r.fee) < 1e15 AND abs(r.net) < 1e15)
                   THEN format('amounts %%s, %%s, %%s are out of range', r.gross, r.fee, r.net)
                 WHEN coalesce(r.currency, '') !~ '^[a-z]{3}$'
                   THEN format('currency %%L is not a lower-case ISO code', r.currency)
                 WHEN c.exponent IS NOT NULL AND (scale(r.gross) > c.exponent OR scale(r.fee) > c.exponent)
                   THEN format('%%s or %%s has more decimals than %%s allows (%%s)', r.gross, r.fee,
                               r.currency, c.exponent)
                 WHEN r.gross - r.fee <> r.net
                   THEN format('net %%s is not gross %%s less fee %%s', r.net, r.gross, r.fee)
                 WHEN r.reporting_category = 'charge' AND coalesce(r.payment_intent_id, '') = ''
                   THEN 'a charge row without payment_intent_id'
                 WHEN r.reporting_category <> 'charge' AND coalesce(r.source_id, '') = ''
                   THEN format('a %%s row without source_id', r.reporting_category)
               END AS problem
          FROM recon_report r
          LEFT JOIN currencies c ON c.code = r.currency) checked
 WHERE problem IS NOT NULL
 ORDER BY line_no
 LIMIT %(limit)s
"""

# One balance transaction per PSP object: two rows for one reference would settle one ledger row twice.
REPEATED_REFERENCES = """
SELECT reporting_category, reference, min(line_no) + 1, max(line_no) + 1, count(*)
  FROM (SELECT line_no, reporting_category,
               CASE reporting_category WHEN 'charge' THEN payment_intent_id ELSE source_id END AS reference
          FROM recon_report) r
 GROUP BY reporting_category, reference
HAVING count(*) > 1
 LIMIT %(limit)s
"""

# Both sides of the day, joined. A ledger transaction is known by its object's PSP reference, or by its own
# reference when the object has none (never sent, or missing): it is then missing at the PSP, never skipped.
# A side's ``carried`` names the open discrepancy of an earlier day it comes
# from (or that this run resolved on an earlier attempt). The ledger's amounts are signed as the PSP signs
# its gross: money in (captures, dispute reversals) positive, money out (refunds, disputes) negative.
DIFF = """
CREATE TEMP TABLE recon_diff ON COMMIT DROP AS
WITH carried AS (
    SELECT * FROM recon_discrepancies d
     WHERE d.kind IN ('missing_at_psp', 'missing_in_ledger') AND d.run_date < %(day)s
       AND (d.status = 'open' OR d.resolved_by_run = %(run)s)
), psp AS (
    SELECT r.line_no + 1 AS line, r.balance_transaction_id AS bt, r.reporting_category AS category,
           CASE r.reporting_category WHEN 'charge' THEN r.payment_intent_id ELSE r.source_id END AS reference,
           r.currency,
           (r.gross * 10::numeric ^ c.exponent)::bigint AS gross,
           (r.fee * 10::numeric ^ c.exponent)::bigint AS fee,
           r.created_utc AT TIME ZONE 'UTC' AS created,
           NULL::text AS carried
      FROM recon_report r
      LEFT JOIN currencies c ON c.code = r.currency
    UNION ALL
    SELECT report_line, psp_balance_transaction, category, reference, psp_currency, psp_gross, psp_fee,
           psp_created, id
      FROM carried WHERE kind = 'missing_in_ledger'
), receivables AS (  -- the day's entries are read by (account, date): the cost follows the day, not history
    SELECT array_agg(id) AS ids FROM accounts WHERE name = 'psp_receivable'
), holds AS (
    SELECT array_agg(id) AS ids FROM accounts WHERE name = 'dispute_hold'
), ledger_day AS (
    SELECT 'charge' AS category, coalesce(p.psp_reference, t.external_ref) AS reference, e.currency, e.amount,
           t.id AS txn, t.posting_date
      FROM ledger_transactions t
      LEFT JOIN payments p ON p.id = t.external_ref
      JOIN ledger_entries e ON e.transaction_id = t.id AND e.posting_date = t.posting_date
                           AND e.direction = 'debit'
     WHERE t.kind = 'capture' AND t.posting_date = %(day)s
       AND e.posting_date = %(day)s AND e.account_id = ANY ((SELECT ids FROM receivables)::bigint[])
    UNION ALL
    SELECT 'refund', coalesce(r.psp_reference, c.psp_refund, t.external_ref), e.currency, -e.amount, t.id,
           t.posting_date
      FROM ledger_transactions t
      LEFT JOIN refunds r ON r.id = t.external_ref
      -- a charge's compensation (captured, then refunded because the ledger failed) names its PSP refund
      -- in the payment's history
      LEFT JOIN LATERAL (SELECT pt.detail ->> 'psp_refund' AS psp_refund
                           FROM payment_transitions pt
                          WHERE t.external_ref LIKE 'compensation-%%'
                            AND pt.payment_id = substr(t.external_ref, length('compensation-') + 1)
                            AND pt.event = 'psp_refunded'
                          ORDER BY pt.id DESC LIMIT 1) c ON true
      JOIN ledger_entries e ON e.transaction_id = t.id AND e.posting_date = t.posting_date
                           AND e.direction = 'credit'
     WHERE t.kind = 'refund' AND t.posting_date = %(day)s
       AND e.posting_date = %(day)s AND e.account_id = ANY ((SELECT ids FROM receivables)::bigint[])
       AND NOT EXISTS (SELECT 1 FROM ledger_transactions x
                        WHERE x.kind = 'refund_reversal' AND x.external_ref = t.external_ref)
    UNION ALL
    SELECT CASE t.kind WHEN 'dispute_hold' THEN 'dispute' ELSE 'dispute_reversal' END,
           coalesce(d.psp_dispute_id, t.external_ref), e.currency,
           CASE t.kind WHEN 'dispute_hold' THEN -e.amount ELSE e.amount END, t.id, t.posting_date
      FROM ledger_transactions t
      LEFT JOIN disputes d ON d.id = t.external_ref
      JOIN ledger_entries e ON e.transaction_id = t.id AND e.posting_date = t.posting_date
     WHERE t.kind IN ('dispute_hold', 'dispute_release') AND t.posting_date = %(day)s
       AND e.posting_date = %(day)s AND e.account_id = ANY ((SELECT ids FROM holds)::bigint[])
), ledger AS (
    SELECT l.*, NULL::text AS carried
      FROM ledger_day l
     WHERE %(first_attempt)s  -- only a re-run can meet a row another run has settled since
        OR NOT EXISTS (SELECT 1 FROM recon_settled s
                        WHERE s.ledger_transaction_id = l.txn AND s.run_id <> %(run)s)
    UNION ALL
    SELECT category, reference, ledger_currency, ledger_amount, ledger_transaction_id, ledger_posting_date, id
      FROM carried WHERE kind = 'missing_at_psp'
)
SELECT psp.line, psp.bt, coalesce(psp.category, l.category) AS category,
       coalesce(psp.reference, l.reference) AS reference,
       psp.currency AS psp_currency, psp.gross AS psp_gross, psp.fee AS psp_fee, psp.created AS psp_created,
       l.currency AS ledger_currency, l.amount AS ledger_amount, l.txn, l.posting_date,
       psp.carried AS psp_carried, l.carried AS ledger_carried,
       CASE WHEN l.reference IS NULL THEN 'missing_in_ledger'
            WHEN psp.reference IS NULL THEN 'missing_at_psp'
            WHEN psp.gross IS NULL OR psp.currency <> l.currency THEN 'currency_mismatch'
            WHEN psp.gross <> l.amount THEN 'amount_mismatch'
            ELSE 'matched'
       END AS outcome
  FROM psp
  FULL JOIN ledger l ON l.category = psp.category AND l.reference = psp.reference
"""

# A difference is this run's unless it is an earlier day's missing row that is still missing.
THIS_RUNS = """
outcome <> 'matched'
AND NOT (outcome = 'missing_in_ledger' AND psp_carried IS NOT NULL)
AND NOT (outcome = 'missing_at_psp' AND ledger_carried IS NOT NULL)
"""

COUNTS = f"""
SELECT count(*) FILTER (WHERE line IS NOT NULL AND psp_carried IS NULL) AS psp_rows,
       count(*) FILTER (WHERE txn IS NOT NULL AND ledger_carried IS NULL) AS ledger_rows,
       count(*) FILTER (WHERE outcome = 'matched') AS matched,
       {", ".join(f"count(*) FILTER (WHERE outcome = '{k}' AND {THIS_RUNS.strip()}) AS {k}" for k in KINDS)}
  FROM recon_diff
"""

FILE_DISCREPANCIES = f"""
INSERT INTO recon_discrepancies (
    id, run_id, run_date, kind, category, reference,
    psp_balance_transaction, psp_gross, psp_fee, psp_currency, psp_created, report_line,
    ledger_transaction_id, ledger_amount, ledger_currency, ledger_posting_date, detail)
SELECT 'dp_' || left(replace(gen_random_uuid()::text, '-', ''), 24), %(run)s, %(day)s, outcome, category,
       reference, bt, psp_gross, psp_fee, psp_currency, psp_created, line,
       txn, ledger_amount, ledger_currency, posting_date,
       CASE outcome
         WHEN 'missing_in_ledger' THEN
           format('the PSP reports %%s %%s (%%s %%s, %%s) with no ledger transaction', category, reference,
                  psp_gross, psp_currency, bt)
         WHEN 'missing_at_psp' THEN
           format('the ledger has %%s %%s (%%s %%s, %%s, %%s) that the PSP did not report',
                  category, reference, ledger_amount, ledger_currency, txn, posting_date)
         WHEN 'currency_mismatch' THEN
           format('the PSP reports %%s in %%s%%s; the ledger in %%s', reference, psp_currency,
                  CASE WHEN psp_gross IS NULL THEN ', a currency the ledger does not know' ELSE '' END,
                  ledger_currency)
         ELSE
           format('the PSP reports %%s for %%s %%s; the ledger %%s', psp_gross, psp_currency, reference,
                  ledger_amount)
       END
  FROM recon_diff
 WHERE {THIS_RUNS}
ON CONFLICT ON CONSTRAINT recon_discrepancies_once DO NOTHING
"""

RESOLVE_CARRIED = """
UPDATE recon_discrepancies d
   SET status = 'resolved', resolution = 'matched_late', resolved_by_run = %(run)s, resolved_at = now(),
       note = format('its counterpart appeared in the reconciliation of %%s', %(day)s::date)
  FROM recon_diff x
 WHERE d.status = 'open'
   AND ((d.id = x.psp_carried AND x.txn IS NOT NULL) OR (d.id = x.ledger_carried AND x.line IS NOT NULL))
"""

# On a re-run: what this run filed before and no longer finds (the PSP corrected its report, say).
RESOLVE_GONE = """
UPDATE recon_discrepancies d
   SET status = 'resolved', resolution = 'not_found_on_rerun', resolved_by_run = %(run)s, resolved_at = now(),
       note = 'a later run of the same day no longer found this difference'
 WHERE d.run_id = %(run)s AND d.status = 'open'
   AND NOT EXISTS (SELECT 1 FROM recon_diff x
                    WHERE x.outcome = d.kind AND x.category = d.category AND x.reference = d.reference)
"""

# A first attempt cannot meet a settled row, so it inserts plainly (the primary key still refuses a second
# settlement); a re-run skips what an earlier attempt settled.
SETTLE = """
WITH settled AS (
    INSERT INTO recon_settled (ledger_transaction_id, run_id, balance_transaction, gross, fee, currency)
    SELECT txn, %(run)s, bt, psp_gross, psp_fee, psp_currency
      FROM recon_diff
     WHERE outcome = 'matched' AND category IN ('charge', 'refund')
     ORDER BY txn  -- neighbours in the primary key: the index is written page by page, not at random
    {on_conflict}
    RETURNING currency, gross, fee
)
SELECT currency, count(*) AS n, sum(gross)::bigint AS gross, sum(fee)::bigint AS fee
  FROM settled GROUP BY currency ORDER BY currency
"""
SETTLE_FIRST = SETTLE.format(on_conflict="")
SETTLE_AGAIN = SETTLE.format(on_conflict="ON CONFLICT (ledger_transaction_id) DO NOTHING")

# One big statement each, planned once: JIT compilation costs seconds and saves nothing here, and sorts and
# hashes of a million rows should stay in memory rather than spill.
SESSION = "SET LOCAL jit = off; SET LOCAL work_mem = '256MB'; SET LOCAL enable_mergejoin = off"

BEGIN_RUN = """
INSERT INTO recon_runs AS r (id, run_date, status)
VALUES (%(id)s, %(day)s, 'running')
ON CONFLICT (run_date) DO UPDATE
   SET status = 'running', attempts = r.attempts + 1, error = NULL, started_at = now(), finished_at = NULL
RETURNING id, attempts, settled
"""

FINISH_RUN = """
UPDATE recon_runs
   SET status = 'succeeded', psp_report = %(report)s, psp_rows = %(psp_rows)s, ledger_rows = %(ledger_rows)s,
       matched = %(matched)s, missing_at_psp = %(missing_at_psp)s, missing_in_ledger = %(missing_in_ledger)s,
       amount_mismatch = %(amount_mismatch)s, currency_mismatch = %(currency_mismatch)s,
       resolved_late = %(resolved_late)s, settled = %(settled)s, finished_at = now()
 WHERE id = %(run)s
"""

FAIL_RUN = """
UPDATE recon_runs SET status = 'failed', error = %(error)s, finished_at = now() WHERE id = %(run)s
"""


class Report(Protocol):
    """Where a run's CSV comes from: ``chunks()`` streams it; ``reference`` names it (the PSP's run)."""

    @property
    def reference(self) -> str | None: ...

    def chunks(self) -> AsyncIterable[bytes]: ...


async def reconcile_day(conn: AsyncConnection[Any], day: date, report: Report) -> RunResult:
    """Reconcile ``day`` on an autocommit connection. The run's row commits first: a failure is recorded."""
    row = await (await conn.execute(BEGIN_RUN, {"id": new_id("recon"), "day": day})).fetchone()
    assert row is not None
    run_id, attempts, settled_before = row
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, day.toordinal()))
            await conn.execute(SESSION)
            result = await _run(conn, run_id, attempts, day, report, settled_before)
    except ReportRejected as exc:
        return await _fail(conn, run_id, attempts, day, str(exc))
    except psycopg.errors.DataError as exc:  # COPY's own refusals: column count, header, encoding
        return await _fail(conn, run_id, attempts, day, f"settlement report rejected: {_describe(exc)}")
    except Exception as exc:
        with contextlib.suppress(psycopg.Error):
            await _fail(conn, run_id, attempts, day, f"{type(exc).__name__}: {exc}"[:1000])
        raise
    return result


async def _run(
    conn: AsyncConnection[Any],
    run_id: str,
    attempts: int,
    day: date,
    report: Report,
    settled_before: dict[str, dict[str, int]],
) -> RunResult:
    params = {"run": run_id, "day": day, "limit": PROBLEMS_SHOWN, "first_attempt": attempts == 1}
    phases = Phases()
    await _load(conn, report)
    phases.mark("load")
    await _check(conn, params)
    phases.mark("check")
    await conn.execute(DIFF, params)
    phases.mark("diff")
    cur = await conn.cursor(row_factory=dict_row).execute(COUNTS)
    counts = await cur.fetchone()
    assert counts is not None
    await conn.execute(FILE_DISCREPANCIES, params)
    resolved_late = (await conn.execute(RESOLVE_CARRIED, params)).rowcount
    if attempts > 1:
        await conn.execute(RESOLVE_GONE, params)
    phases.mark("queue")
    settled = await _settle(conn, run_id, attempts, day, settled_before)
    phases.mark("settle")
    await conn.execute(
        FINISH_RUN,
        {**counts, **params, "report": report.reference, "resolved_late": resolved_late,
         "settled": json.dumps(settled)},
    )  # fmt: skip
    return RunResult(
        id=run_id,
        run_date=day,
        status="succeeded",
        attempts=attempts,
        psp_rows=counts["psp_rows"],
        ledger_rows=counts["ledger_rows"],
        matched=counts["matched"],
        discrepancies={kind: counts[kind] for kind in KINDS},
        resolved_late=resolved_late,
        settled=settled,
        phases=phases.seconds,
    )


async def _load(conn: AsyncConnection[Any], report: Report) -> None:
    chunks = aiter(report.chunks())
    first = await anext(chunks, b"")
    if not first:
        raise ReportRejected("the settlement report is empty: not even a header line")
    await conn.execute(CREATE_STAGING)
    async with conn.cursor() as cur, cur.copy(COPY_REPORT) as copy:
        await copy.write(first)
        async for chunk in chunks:
            await copy.write(chunk)


async def _check(conn: AsyncConnection[Any], params: dict[str, Any]) -> None:
    problems = await (await conn.execute(ROW_PROBLEMS, params)).fetchall()
    if problems:
        listed = "; ".join(f"line {line}: {problem}" for line, problem in problems)
        raise ReportRejected(f"settlement report rejected: {listed}")
    repeated = await (await conn.execute(REPEATED_REFERENCES, params)).fetchall()
    if repeated:
        listed = "; ".join(
            f"{n} lines ({first} … {last}) report {category} {reference}"
            for category, reference, first, last, n in repeated
        )
        raise ReportRejected(f"settlement report rejected: {listed}")


async def _settle(
    conn: AsyncConnection[Any],
    run_id: str,
    attempts: int,
    day: date,
    settled_before: dict[str, dict[str, int]],
) -> dict[str, dict[str, int]]:
    """Mark matched rows settled (each once) and book what they add up to, one posting per currency."""
    totals = {cur: dict(values) for cur, values in settled_before.items()}
    settle = SETTLE_FIRST if attempts == 1 else SETTLE_AGAIN
    rows = await (await conn.execute(settle, {"run": run_id})).fetchall()
    postings = []
    for currency, n, gross, fee in rows:
        if gross or fee:  # a day whose charges and refunds cancel out moves nothing
            ref = f"{run_id}/{attempts}/{currency}"
            postings.append(
                settlement_posting(ref, Money(gross, currency), Money(fee, currency), posting_date=day)
            )
        total = totals.setdefault(currency, {"rows": 0, "gross": 0, "fee": 0, "net": 0})
        total["rows"] += n
        total["gross"] += gross
        total["fee"] += fee
        total["net"] += gross - fee
    for result in await post_batch_async(conn, postings, RECON_SHARD):
        if not result.ok:
            raise RuntimeError(f"settlement posting {result.external_ref} refused: {result.error}")
    return totals


async def _fail(conn: AsyncConnection[Any], run_id: str, attempts: int, day: date, error: str) -> RunResult:
    await conn.execute(FAIL_RUN, {"run": run_id, "error": error})
    return RunResult(id=run_id, run_date=day, status="failed", attempts=attempts, error=error)


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    where = f" ({diag.context.strip()})" if diag.context else ""
    return f"{diag.message_primary or exc}{where}"
