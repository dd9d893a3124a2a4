-- Refunds and payouts, and idempotency keys that can name either (not only a payment).

ALTER TABLE idempotency_keys RENAME COLUMN payment_id TO object_id;

CREATE TABLE refunds (
    id                  text PRIMARY KEY CHECK (id LIKE 're\_%'),
    merchant_id         text NOT NULL REFERENCES merchants (id),
    payment_id          text NOT NULL REFERENCES payments (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    -- the part of the charge's fee this refund gives back (see ledger.postings.refund_fee_share)
    fee_returned        bigint NOT NULL CHECK (fee_returned >= 0 AND fee_returned <= amount),
    currency            text NOT NULL,
    reason              text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    state               text NOT NULL,
    idempotency_key     text,  -- null for a refund learned from the PSP (a webhook)
    psp_idempotency_key text NOT NULL UNIQUE,
    psp_reference       text UNIQUE,
    failure_reason      text,
    ledger_transaction_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id, created_at DESC, id DESC);
CREATE INDEX refunds_merchant_created ON refunds (merchant_id, created_at DESC, id DESC);
CREATE INDEX refunds_unfinished ON refunds (updated_at) WHERE state NOT IN ('succeeded', 'failed');

CREATE TABLE refund_transitions (
    id         bigserial PRIMARY KEY,
    refund_id  text NOT NULL REFERENCES refunds (id),
    from_state text NOT NULL,
    event      text NOT NULL,
    to_state   text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_transitions_refund ON refund_transitions (refund_id, id);

CREATE TABLE payouts (
    id                    text PRIMARY KEY CHECK (id LIKE 'po\_%'),
    merchant_id           text NOT NULL REFERENCES merchants (id),
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              text NOT NULL,
    state                 text NOT NULL CHECK (state IN ('pending', 'in_transit')),
    idempotency_key       text NOT NULL,
    ledger_transaction_id text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payouts_merchant_created ON payouts (merchant_id, created_at DESC, id DESC);
CREATE INDEX payouts_unfinished ON payouts (updated_at) WHERE state = 'pending';
