-- Nightly reconciliation with the PSP's settlement report: runs, the discrepancy review queue, and the
-- ledger transactions each run settled. The diff itself is in ledger/reconcile.py.

-- What the PSP keeps of each settlement: an expense, next to our own fee revenue.
INSERT INTO account_types (name, normal_side, scope, description) VALUES
    ('psp_fees', 'debit', 'house', 'processing fees the PSP kept from its settlements');

-- The report gives amounts in major units; these turn them into the ledger's minor units. A currency the
-- report names but this table does not is a discrepancy, never a guess. Mirrors payray.money.
CREATE TABLE currencies (
    code     text PRIMARY KEY CHECK (code ~ '^[a-z]{3}$'),
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
INSERT INTO currencies (code, exponent) VALUES
    ('usd', 2), ('eur', 2), ('gbp', 2), ('chf', 2), ('cad', 2), ('aud', 2), ('jpy', 0), ('kwd', 3);

-- One run per UTC day; re-running a day updates its row (attempts counts them).
CREATE TABLE recon_runs (
    id                text PRIMARY KEY CHECK (id LIKE 'recon\_%'),
    run_date          date NOT NULL UNIQUE,
    status            text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 1 CHECK (attempts > 0),
    psp_report        text,
    psp_rows          bigint NOT NULL DEFAULT 0,
    ledger_rows       bigint NOT NULL DEFAULT 0,
    matched           bigint NOT NULL DEFAULT 0,
    missing_at_psp    bigint NOT NULL DEFAULT 0,
    missing_in_ledger bigint NOT NULL DEFAULT 0,
    amount_mismatch   bigint NOT NULL DEFAULT 0,
    currency_mismatch bigint NOT NULL DEFAULT 0,
    resolved_late     bigint NOT NULL DEFAULT 0,
    settled           jsonb NOT NULL DEFAULT '{}'::jsonb,
    error             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- The review queue. A row keeps both sides as they were seen, so a person (or the next day's run, which
-- carries open missing_* rows forward) can match them later without the report at hand.
CREATE TABLE recon_discrepancies (
    id                 text PRIMARY KEY CHECK (id LIKE 'dp\_%'),
    run_id             text NOT NULL REFERENCES recon_runs (id),
    run_date           date NOT NULL,
    kind               text NOT NULL
        CHECK (kind IN ('missing_at_psp', 'missing_in_ledger', 'amount_mismatch', 'currency_mismatch')),
    category           text NOT NULL,
    reference          text NOT NULL,
    psp_balance_transaction text,
    psp_gross          bigint,
    psp_fee            bigint,
    psp_currency       text,
    psp_created        timestamptz,
    report_line        bigint,
    ledger_transaction_id text,
    ledger_amount      bigint,
    ledger_currency    text,
    ledger_posting_date date,
    detail             text NOT NULL DEFAULT '',
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution         text,
    note               text,
    resolved_by_run    text REFERENCES recon_runs (id),
    resolved_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'resolved') = (resolution IS NOT NULL AND resolved_at IS NOT NULL)),
    -- a re-run of a day files the same difference once, and never reopens one a person resolved
    CONSTRAINT recon_discrepancies_once UNIQUE (run_id, kind, category, reference)
);
CREATE INDEX recon_discrepancies_open ON recon_discrepancies (kind, run_date) WHERE status = 'open';
CREATE INDEX recon_discrepancies_listing ON recon_discrepancies (status, id DESC);

-- Each ledger transaction the PSP settled, and by which run and balance transaction: settling is once only.
CREATE TABLE recon_settled (
    ledger_transaction_id   text PRIMARY KEY,
    run_id                  text NOT NULL,
    balance_transaction     text NOT NULL,
    gross                   bigint NOT NULL,
    fee                     bigint NOT NULL,
    currency                text NOT NULL
);
