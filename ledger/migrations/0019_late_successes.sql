-- A capture or authorization at a PSP that a payment had left: its attempt there ended in a definite failure
-- and the payment went on (or the PSP holds a second one). Found by a webhook, the recovery sweep or
-- reconciliation, it is given back at that PSP and booked both ways, so the ledger shows the money that moved
-- twice and its return. One row per PSP object: finding it again changes nothing.
CREATE TABLE late_successes (
    id                   text PRIMARY KEY,            -- ls_…: the ledger's reference for both movements
    payment_id           text NOT NULL REFERENCES payments (id),
    merchant_id          text NOT NULL,
    psp                  text NOT NULL CHECK (psp IN ('stripe', 'braintree')),
    psp_reference        text NOT NULL,
    amount               bigint NOT NULL CHECK (amount > 0),
    currency             text NOT NULL,
    found_as             text NOT NULL CHECK (found_as IN ('captured', 'authorized')),
    found_by             text NOT NULL,               -- webhook | recovery
    state                text NOT NULL DEFAULT 'found' CHECK (state IN ('found', 'reversed')),
    psp_refund_reference text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (psp, psp_reference)
);
CREATE INDEX late_successes_unfinished ON late_successes (updated_at) WHERE state = 'found';

-- When the recovery sweep last asked an ended attempt's PSP whether it captured after all.
ALTER TABLE payment_attempts ADD COLUMN checked_at timestamptz;
