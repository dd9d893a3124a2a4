-- Merchants, payments with their transition history, durable idempotency keys and the outbox.

CREATE TABLE merchants (
    id           text PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    api_key_hash bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    id                  text PRIMARY KEY,
    merchant_id         text NOT NULL REFERENCES merchants (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            text NOT NULL,
    payment_method      text NOT NULL,
    description         text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    customer            text,
    state               text NOT NULL,
    idempotency_key     text NOT NULL,
    psp_idempotency_key text NOT NULL UNIQUE,
    psp_reference       text UNIQUE,
    failure_code        text,
    failure_message     text,
    amount_refunded     bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0 AND amount_refunded <= amount),
    ledger_transaction_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_merchant_created ON payments (merchant_id, created_at DESC, id DESC);
CREATE INDEX payments_unfinished ON payments (updated_at)
    WHERE state NOT IN ('succeeded', 'declined', 'failed', 'compensated');

-- Append-only history of every state change: the audit trail and the replay log of the state machine.
CREATE TABLE payment_transitions (
    id         bigserial PRIMARY KEY,
    payment_id text NOT NULL REFERENCES payments (id),
    from_state text,
    event      text NOT NULL,
    to_state   text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_transitions_payment ON payment_transitions (payment_id, id);

-- The durable idempotency record; Redis is only the fast path in front of it.
CREATE TABLE idempotency_keys (
    merchant_id     text NOT NULL REFERENCES merchants (id),
    key             text NOT NULL,
    fingerprint     bytea NOT NULL,
    payment_id      text,
    response_status integer,
    response_body   bytea,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Transactional outbox: written in the same transaction as the state change it announces.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    aggregate_id text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
