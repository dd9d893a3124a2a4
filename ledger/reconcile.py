"""One day's reconciliation with each PSP's settlement report, done by Postgres.

Each PSP's report is streamed into one temporary staging table with ``COPY`` (Python holds one chunk at a
time), its rows tagged with the PSP, checked, and diffed against the ledger's captures, refunds and dispute
movements of the day in one full outer join on the PSP and its reference: a ledger row belongs to the PSP of
its payment (``payments.psp``, through the refund or dispute for those), so one PSP's row never matches
another's. Differences go to the review queue (``recon_discrepancies``) under their PSP; matched captures and
refunds are marked settled once (``recon_settled``) and booked as one settlement posting per PSP and currency:
bank cash and PSP fees against the PSP receivable (one receivable for every PSP, as the ledger has).

Everything a run writes commits in one transaction, so a run that fails leaves nothing half done (one PSP's
bad report fails the whole day: a day is reconciled for every PSP or not at all), and running a day again
files nothing twice and settles nothing twice. A row the PSP settled a day late is matched by the next day's
run: open ``missing_*`` discrepancies of earlier days are carried into each run's join, and resolved when
their counterpart turns up at the same PSP.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection, sql
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
#: The PSP a run's lone report is, and that of a ledger row whose payment cannot be found (booked by hand, or
#: before payments named their PSP): every payment made before there was a second PSP went to Stripe.
DEFAULT_PSP = "stripe"
#: The house-account balance shard settlement postings use: none of the ledger writers' (0 … writers - 1).
RECON_SHARD = 900
LOCK_NAMESPACE = 0x7265636F  # "reco": pg_advisory_xact_lock(namespace, day) serializes runs of one day
PROBLEMS_SHOWN = 5


class ReportRejected(Exception):
    """The report cannot be reconciled as it is (unreadable, malformed, contradictory): the run fails."""


Settled = dict[str, dict[str, int]]


@dataclass(frozen=True)
class PspRun:
    """One PSP's part of a run: its report against the ledger rows of the payments made there."""

    psp_report: str | None = None
    psp_rows: int = 0
    ledger_rows: int = 0
    matched: int = 0
    #: captures the PSP voided the same day (a refund before settlement): it reports neither, nor should it
    voided: int = 0
    discrepancies: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    resolved_late: int = 0
    settled: Settled = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "psp_report": self.psp_report,
            "psp_rows": self.psp_rows,
            "ledger_rows": self.ledger_rows,
            "matched": self.matched,
            "voided": self.voided,
            "discrepancies": dict(self.discrepancies),
            "resolved_late": self.resolved_late,
            "settled": self.settled,
        }


@dataclass(frozen=True)
class RunResult:
    """A run's totals over its PSPs (for a Stripe-only day, Stripe's own), and each PSP's in ``by_psp``."""

    id: str
    run_date: date
    status: str
    attempts: int
    psp_rows: int = 0
    ledger_rows: int = 0
    matched: int = 0
    discrepancies: dict[str, int] = field(default_factory=dict)
    resolved_late: int = 0
    settled: Settled = field(default_factory=dict)
    error: str | None = None
    #: seconds spent in each step of the run (before its commit)
    phases: dict[str, float] = field(default_factory=dict)
    by_psp: dict[str, PspRun] = field(default_factory=dict)


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

# ``psp`` and ``line_no`` are filled in by COPY from their defaults, set again before each PSP's report.
CREATE_STAGING = """
CREATE TEMP TABLE recon_report (
    psp text NOT NULL DEFAULT '',
    line_no bigint GENERATED ALWAYS AS IDENTITY,
    {columns}
) ON COMMIT DROP
""".format(columns=",\n    ".join(f"{name} {COLUMN_TYPES.get(name, 'text')}" for name in REPORT_COLUMNS))

NEXT_REPORT = sql.SQL(
    "ALTER TABLE recon_report ALTER COLUMN psp SET DEFAULT {psp}, ALTER COLUMN line_no RESTART WITH 1"
)

COPY_REPORT = "COPY recon_report ({columns}) FROM STDIN WITH (FORMAT csv, HEADER MATCH)".format(
    columns=", ".join(REPORT_COLUMNS)
)

# The first problems of each row of one PSP's report, in report order (line 1 is the header).
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
          LEFT JOIN currencies c ON c.code = r.currency
         WHERE r.psp = %(psp)s) checked
 WHERE problem IS NOT NULL
 ORDER BY line_no
 LIMIT %(limit)s
"""

# One balance transaction per PSP object: two rows for one reference would settle one ledger row twice.
REPEATED_REFERENCES = """
SELECT reporting_category, reference, min(line_no) + 1, max(line_no) + 1, count(*)
  FROM (SELECT line_no, reporting_category,
               CASE reporting_category WHEN 'charge' THEN payment_intent_id ELSE source_id END AS reference
          FROM recon_report
         WHERE psp = %(psp)s) r
 GROUP BY reporting_category, reference
HAVING count(*) > 1
 LIMIT %(limit)s
"""

# Both sides of the day, joined, each PSP's report with the ledger rows of that PSP's payments. A ledger
# transaction is known by its object's PSP reference, or by its own reference when the object has none (never
# sent, or missing): it is then missing at the PSP, never skipped. Its PSP is its payment's (a refund's or a
# dispute's through its charge; a charge's compensation names its payment in its own reference).
# A side's ``carried`` names the open discrepancy of an earlier day it comes
# from (or that this run resolved on an earlier attempt). The ledger's amounts are signed as the PSP signs
# its gross: money in (captures, dispute reversals) positive, money out (refunds, disputes) negative.
# ``payment`` and ``void`` let a capture be paired with the refund that voided it (``VOIDED``): a refund whose
# PSP reference is its charge's own is a void (Braintree refunds an unsettled sale so).
DIFF = """
CREATE TEMP TABLE recon_diff ON COMMIT DROP AS
WITH carried AS (
    SELECT * FROM recon_discrepancies d
     WHERE d.kind IN ('missing_at_psp', 'missing_in_ledger') AND d.run_date < %(day)s
       AND (d.status = 'open' OR d.resolved_by_run = %(run)s)
), psp AS (
    SELECT r.psp, r.line_no + 1 AS line, r.balance_transaction_id AS bt, r.reporting_category AS category,
           CASE r.reporting_category WHEN 'charge' THEN r.payment_intent_id ELSE r.source_id END AS reference,
           r.currency,
           (r.gross * 10::numeric ^ c.exponent)::bigint AS gross,
           (r.fee * 10::numeric ^ c.exponent)::bigint AS fee,
           r.created_utc AT TIME ZONE 'UTC' AS created,
           NULL::text AS carried
      FROM recon_report r
      LEFT JOIN currencies c ON c.code = r.currency
    UNION ALL
    SELECT psp, report_line, psp_balance_transaction, category, reference, psp_currency, psp_gross, psp_fee,
           psp_created, id
      FROM carried WHERE kind = 'missing_in_ledger'
), receivables AS (  -- the day's entries are read by (account, date): the cost follows the day, not history
    SELECT array_agg(id) AS ids FROM accounts WHERE name = 'psp_receivable'
), holds AS (
    SELECT array_agg(id) AS ids FROM accounts WHERE name = 'dispute_hold'
), ledger_day AS (
    SELECT coalesce(p.psp, ls.psp, %(default_psp)s) AS psp, 'charge' AS category,
           coalesce(p.psp_reference, ls.psp_reference, t.external_ref) AS reference, e.currency, e.amount,
           t.id AS txn, t.posting_date, coalesce(p.id, ls.id) AS payment, false AS void
      FROM ledger_transactions t
      LEFT JOIN payments p ON p.id = t.external_ref
      -- a late success: a capture at a PSP its payment had left, booked under its own id
      LEFT JOIN late_successes ls ON ls.id = t.external_ref
      JOIN ledger_entries e ON e.transaction_id = t.id AND e.posting_date = t.posting_date
                           AND e.direction = 'debit'
     WHERE t.kind = 'capture' AND t.posting_date = %(day)s
       AND e.posting_date = %(day)s AND e.account_id = ANY ((SELECT ids FROM receivables)::bigint[])
    UNION ALL
    SELECT coalesce(p.psp, ls.psp, %(default_psp)s), 'refund', x.reference, e.currency, -e.amount, t.id,
           t.posting_date, coalesce(p.id, ls.id),
           coalesce(x.reference = coalesce(p.psp_reference, ls.psp_reference), false)
      FROM ledger_transactions t
      LEFT JOIN refunds r ON r.id = t.external_ref
      LEFT JOIN late_successes ls ON ls.id = t.external_ref  -- a late success given back
      -- a charge's compensation (captured, then refunded because the ledger failed) names its PSP refund
      -- in the payment's history
      LEFT JOIN LATERAL (SELECT pt.detail ->> 'psp_refund' AS psp_refund
                           FROM payment_transitions pt
                          WHERE t.external_ref LIKE 'compensation-%%'
                            AND pt.payment_id = substr(t.external_ref, length('compensation-') + 1)
                            AND pt.event = 'psp_refunded'
                          ORDER BY pt.id DESC LIMIT 1) c ON true
      LEFT JOIN payments p
             ON p.id = coalesce(r.payment_id,
                                CASE WHEN t.external_ref LIKE 'compensation-%%'
                                     THEN substr(t.external_ref, length('compensation-') + 1) END)
      CROSS JOIN LATERAL (
          SELECT coalesce(r.psp_reference, c.psp_refund, ls.psp_refund_reference, t.external_ref) AS reference
      ) x
      JOIN ledger_entries e ON e.transaction_id = t.id AND e.posting_date = t.posting_date
                           AND e.direction = 'credit'
     WHERE t.kind = 'refund' AND t.posting_date = %(day)s
       AND e.posting_date = %(day)s AND e.account_id = ANY ((SELECT ids FROM receivables)::bigint[])
       AND NOT EXISTS (SELECT 1 FROM ledger_transactions x
                        WHERE x.kind = 'refund_reversal' AND x.external_ref = t.external_ref)
    UNION ALL
    SELECT coalesce(p.psp, %(default_psp)s),
           CASE t.kind WHEN 'dispute_hold' THEN 'dispute' ELSE 'dispute_reversal' END,
           coalesce(d.psp_dispute_id, t.external_ref), e.currency,
           CASE t.kind WHEN 'dispute_hold' THEN -e.amount ELSE e.amount END, t.id, t.posting_date, NULL, false
      FROM ledger_transactions t
      LEFT JOIN disputes d ON d.id = t.external_ref
      LEFT JOIN payments p ON p.id = d.payment_id
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
    SELECT psp, category, reference, ledger_currency, ledger_amount, ledger_transaction_id,
           ledger_posting_date, NULL, false, id
      FROM carried WHERE kind = 'missing_at_psp'
)
SELECT coalesce(psp.psp, l.psp) AS psp, psp.line, psp.bt, coalesce(psp.category, l.category) AS category,
       coalesce(psp.reference, l.reference) AS reference,
       psp.currency AS psp_currency, psp.gross AS psp_gross, psp.fee AS psp_fee, psp.created AS psp_created,
       l.currency AS ledger_currency, l.amount AS ledger_amount, l.txn, l.posting_date, l.payment, l.void,
       psp.carried AS psp_carried, l.carried AS ledger_carried,
       CASE WHEN l.reference IS NULL THEN 'missing_in_ledger'
            WHEN psp.reference IS NULL THEN 'missing_at_psp'
            WHEN psp.gross IS NULL OR psp.currency <> l.currency THEN 'currency_mismatch'
            WHEN psp.gross <> l.amount THEN 'amount_mismatch'
            ELSE 'matched'
       END AS outcome
  FROM psp
  FULL JOIN ledger l ON l.psp = psp.psp AND l.category = psp.category AND l.reference = psp.reference
"""

# A capture and the refund that voided it, both booked this day and neither reported by their PSP: the money
# never moved, so there is nothing to settle and nothing missing. A void the PSP did report, or one whose
# amount is not the capture's, stays a difference.
VOIDED = """
WITH pairs AS (
    SELECT v.txn AS refund_txn, c.txn AS capture_txn
      FROM recon_diff v
      JOIN recon_diff c ON c.payment = v.payment AND c.psp = v.psp AND c.category = 'charge'
                       AND c.outcome = 'missing_at_psp' AND c.ledger_carried IS NULL
                       AND c.ledger_currency = v.ledger_currency AND c.ledger_amount = -v.ledger_amount
     WHERE v.void AND v.outcome = 'missing_at_psp' AND v.ledger_carried IS NULL
)
UPDATE recon_diff d SET outcome = 'voided'
  FROM (SELECT refund_txn AS txn FROM pairs UNION SELECT capture_txn FROM pairs) voided
 WHERE d.txn = voided.txn AND d.ledger_carried IS NULL
"""

# A difference is this run's unless it is an earlier day's missing row that is still missing.
THIS_RUNS = """
outcome NOT IN ('matched', 'voided')
AND NOT (outcome = 'missing_in_ledger' AND psp_carried IS NOT NULL)
AND NOT (outcome = 'missing_at_psp' AND ledger_carried IS NOT NULL)
"""

COUNTS = f"""
SELECT psp,
       count(*) FILTER (WHERE line IS NOT NULL AND psp_carried IS NULL) AS psp_rows,
       count(*) FILTER (WHERE txn IS NOT NULL AND ledger_carried IS NULL) AS ledger_rows,
       count(*) FILTER (WHERE outcome = 'matched') AS matched,
       count(*) FILTER (WHERE outcome = 'voided') AS voided,
       {", ".join(f"count(*) FILTER (WHERE outcome = '{k}' AND {THIS_RUNS.strip()}) AS {k}" for k in KINDS)}
  FROM recon_diff
 GROUP BY psp
"""

FILE_DISCREPANCIES = f"""
INSERT INTO recon_discrepancies (
    id, run_id, run_date, psp, kind, category, reference,
    psp_balance_transaction, psp_gross, psp_fee, psp_currency, psp_created, report_line,
    ledger_transaction_id, ledger_amount, ledger_currency, ledger_posting_date, detail)
SELECT 'dp_' || left(replace(gen_random_uuid()::text, '-', ''), 24), %(run)s, %(day)s, psp, outcome, category,
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
RETURNING d.psp
"""

# On a re-run: what this run filed before and no longer finds (the PSP corrected its report, say).
RESOLVE_GONE = """
UPDATE recon_discrepancies d
   SET status = 'resolved', resolution = 'not_found_on_rerun', resolved_by_run = %(run)s, resolved_at = now(),
       note = 'a later run of the same day no longer found this difference'
 WHERE d.run_id = %(run)s AND d.status = 'open'
   AND NOT EXISTS (SELECT 1 FROM recon_diff x
                    WHERE x.psp = d.psp AND x.outcome = d.kind AND x.category = d.category
                      AND x.reference = d.reference)
"""

# A first attempt cannot meet a settled row, so it inserts plainly (the primary key still refuses a second
# settlement); a re-run skips what an earlier attempt settled.
SETTLE = """
WITH settled AS (
    INSERT INTO recon_settled (ledger_transaction_id, run_id, balance_transaction, gross, fee, currency, psp)
    SELECT txn, %(run)s, bt, psp_gross, psp_fee, psp_currency, psp
      FROM recon_diff
     WHERE outcome = 'matched' AND category IN ('charge', 'refund')
     ORDER BY txn  -- neighbours in the primary key: the index is written page by page, not at random
    {on_conflict}
    RETURNING psp, currency, gross, fee
)
SELECT psp, currency, count(*) AS n, sum(gross)::bigint AS gross, sum(fee)::bigint AS fee
  FROM settled GROUP BY psp, currency ORDER BY psp, currency
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
RETURNING id, attempts, by_psp
"""

FINISH_RUN = """
UPDATE recon_runs
   SET status = 'succeeded', psp_report = %(report)s, psp_rows = %(psp_rows)s, ledger_rows = %(ledger_rows)s,
       matched = %(matched)s, missing_at_psp = %(missing_at_psp)s, missing_in_ledger = %(missing_in_ledger)s,
       amount_mismatch = %(amount_mismatch)s, currency_mismatch = %(currency_mismatch)s,
       resolved_late = %(resolved_late)s, settled = %(settled)s, by_psp = %(by_psp)s, finished_at = now()
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


class _Loading:
    """Which PSP's report a run is reading, so that a failure names it."""

    def __init__(self, several: bool) -> None:
        self.several = several
        self.psp: str | None = None

    def named(self, message: str) -> str:
        return f"{self.psp}: {message}" if self.several and self.psp else message


async def reconcile_day(
    conn: AsyncConnection[Any], day: date, reports: Report | Mapping[str, Report]
) -> RunResult:
    """Reconcile ``day`` on an autocommit connection, against each PSP's report (``{psp: report}``; a lone
    report is Stripe's). The run's row commits first: a failure is recorded."""
    by_name = dict(reports) if isinstance(reports, Mapping) else {DEFAULT_PSP: reports}
    assert by_name, "a run reconciles at least one PSP's report"
    loading = _Loading(several=len(by_name) > 1)
    row = await (await conn.execute(BEGIN_RUN, {"id": new_id("recon"), "day": day})).fetchone()
    assert row is not None
    run_id, attempts, by_psp_before = row
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, day.toordinal()))
            await conn.execute(SESSION)
            result = await _run(conn, run_id, attempts, day, by_name, by_psp_before, loading)
    except ReportRejected as exc:
        return await _fail(conn, run_id, attempts, day, loading.named(str(exc)))
    except psycopg.errors.DataError as exc:  # COPY's own refusals: column count, header, encoding
        message = f"settlement report rejected: {_describe(exc)}"
        return await _fail(conn, run_id, attempts, day, loading.named(message))
    except Exception as exc:
        with contextlib.suppress(psycopg.Error):
            await _fail(conn, run_id, attempts, day, loading.named(f"{type(exc).__name__}: {exc}")[:1000])
        raise
    return result


async def _run(
    conn: AsyncConnection[Any],
    run_id: str,
    attempts: int,
    day: date,
    reports: dict[str, Report],
    by_psp_before: dict[str, dict[str, Any]],
    loading: _Loading,
) -> RunResult:
    params = {
        "run": run_id,
        "day": day,
        "limit": PROBLEMS_SHOWN,
        "first_attempt": attempts == 1,
        "default_psp": DEFAULT_PSP,
    }
    phases = Phases()
    await conn.execute(CREATE_STAGING)
    for name, report in reports.items():
        loading.psp = name
        await _load(conn, name, report)
    phases.mark("load")
    for name in reports:
        loading.psp = name
        await _check(conn, {**params, "psp": name})
    loading.psp = None
    phases.mark("check")
    await conn.execute(DIFF, params)
    await conn.execute(VOIDED)
    phases.mark("diff")
    cur = await conn.cursor(row_factory=dict_row).execute(COUNTS)
    counts = {row["psp"]: row for row in await cur.fetchall()}
    await conn.execute(FILE_DISCREPANCIES, params)
    resolved = await (await conn.execute(RESOLVE_CARRIED, params)).fetchall()
    if attempts > 1:
        await conn.execute(RESOLVE_GONE, params)
    phases.mark("queue")
    settled_before = {name: part.get("settled", {}) for name, part in by_psp_before.items()}
    settled = await _settle(conn, run_id, attempts, day, settled_before)
    phases.mark("settle")

    names = [*reports, *(n for n in sorted({*counts, *settled}) if n not in reports)]
    by_psp = {
        name: PspRun(
            psp_report=reports[name].reference if name in reports else None,
            psp_rows=counts[name]["psp_rows"] if name in counts else 0,
            ledger_rows=counts[name]["ledger_rows"] if name in counts else 0,
            matched=counts[name]["matched"] if name in counts else 0,
            voided=counts[name]["voided"] if name in counts else 0,
            discrepancies={kind: counts[name][kind] if name in counts else 0 for kind in KINDS},
            resolved_late=sum(1 for (psp,) in resolved if psp == name),
            settled=settled.get(name, {}),
        )
        for name in names
    }
    result = RunResult(
        id=run_id,
        run_date=day,
        status="succeeded",
        attempts=attempts,
        psp_rows=sum(part.psp_rows for part in by_psp.values()),
        ledger_rows=sum(part.ledger_rows for part in by_psp.values()),
        matched=sum(part.matched for part in by_psp.values()),
        discrepancies={kind: sum(part.discrepancies[kind] for part in by_psp.values()) for kind in KINDS},
        resolved_late=len(resolved),
        settled=_totals(part.settled for part in by_psp.values()),
        phases=phases.seconds,
        by_psp=by_psp,
    )
    stripe = by_psp.get(DEFAULT_PSP)
    await conn.execute(
        FINISH_RUN,
        {
            **params,
            **result.discrepancies,
            "report": stripe.psp_report if stripe is not None else None,
            "psp_rows": result.psp_rows,
            "ledger_rows": result.ledger_rows,
            "matched": result.matched,
            "resolved_late": result.resolved_late,
            "settled": json.dumps(result.settled),
            "by_psp": json.dumps({name: part.as_json() for name, part in by_psp.items()}),
        },
    )
    return result


async def _load(conn: AsyncConnection[Any], psp: str, report: Report) -> None:
    chunks = aiter(report.chunks())
    first = await anext(chunks, b"")
    if not first:
        raise ReportRejected("the settlement report is empty: not even a header line")
    await conn.execute(NEXT_REPORT.format(psp=sql.Literal(psp)))
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


def _settlement_ref(run_id: str, attempts: int, psp: str, currency: str) -> str:
    """Stripe's postings keep the reference they had before there was a second PSP."""
    if psp == DEFAULT_PSP:
        return f"{run_id}/{attempts}/{currency}"
    return f"{run_id}/{attempts}/{psp}/{currency}"


def _totals(parts: Any) -> Settled:
    totals: Settled = {}
    for part in parts:
        for currency, values in part.items():
            total = totals.setdefault(currency, {"rows": 0, "gross": 0, "fee": 0, "net": 0})
            for key in total:
                total[key] += values.get(key, 0)
    return dict(sorted(totals.items()))


async def _settle(
    conn: AsyncConnection[Any],
    run_id: str,
    attempts: int,
    day: date,
    settled_before: dict[str, Settled],
) -> dict[str, Settled]:
    """Mark matched rows settled (each once) and book what they add up to, one posting per PSP and currency
    (each PSP pays out on its own); the totals are cumulative over the day's attempts."""
    totals = {
        psp: {cur: dict(values) for cur, values in part.items()} for psp, part in settled_before.items()
    }
    settle = SETTLE_FIRST if attempts == 1 else SETTLE_AGAIN
    rows = await (await conn.execute(settle, {"run": run_id})).fetchall()
    postings = []
    for psp, currency, n, gross, fee in rows:
        if gross or fee:  # a day whose charges and refunds cancel out moves nothing
            ref = _settlement_ref(run_id, attempts, psp, currency)
            postings.append(
                settlement_posting(ref, Money(gross, currency), Money(fee, currency), posting_date=day)
            )
        total = totals.setdefault(psp, {}).setdefault(currency, {"rows": 0, "gross": 0, "fee": 0, "net": 0})
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
