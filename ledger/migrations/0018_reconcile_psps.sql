-- Reconciliation per PSP: each PSP's settlement report is diffed against the ledger rows of the payments made
-- at that PSP, so each discrepancy and each settled row names its PSP. Everything reconciled before there was
-- a second PSP was Stripe's.

ALTER TABLE recon_discrepancies ADD COLUMN psp text NOT NULL DEFAULT 'stripe'
    CHECK (psp IN ('stripe', 'braintree'));
-- The same reference may turn up at two PSPs (a row one PSP reports that the ledger has at the other): each
-- is its own difference.
ALTER TABLE recon_discrepancies DROP CONSTRAINT recon_discrepancies_once;
ALTER TABLE recon_discrepancies
    ADD CONSTRAINT recon_discrepancies_once UNIQUE (run_id, psp, kind, category, reference);

ALTER TABLE recon_settled ADD COLUMN psp text NOT NULL DEFAULT 'stripe';

-- A run's counts, report and settlement for each PSP it covered, beside the totals it always had:
-- {"stripe": {"psp_report", "psp_rows", "ledger_rows", "matched", "discrepancies": {kind: n}, "resolved_late",
-- "settled": {currency: {rows, gross, fee, net}}}, ...}. ``psp_report`` stays Stripe's report.
ALTER TABLE recon_runs ADD COLUMN by_psp jsonb NOT NULL DEFAULT '{}'::jsonb;
UPDATE recon_runs
   SET by_psp = jsonb_build_object('stripe', jsonb_build_object(
           'psp_report', psp_report,
           'psp_rows', psp_rows,
           'ledger_rows', ledger_rows,
           'matched', matched,
           'discrepancies', jsonb_build_object(
               'missing_at_psp', missing_at_psp,
               'missing_in_ledger', missing_in_ledger,
               'amount_mismatch', amount_mismatch,
               'currency_mismatch', currency_mismatch),
           'resolved_late', resolved_late,
           'settled', settled))
 WHERE status = 'succeeded' OR psp_report IS NOT NULL OR settled <> '{}'::jsonb;
