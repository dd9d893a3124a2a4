-- Customers, per merchant. A deleted customer keeps its row (its charges still name it) but is gone for the
-- API: retrieve, list, update and charges see only rows with deleted_at NULL.

CREATE TABLE customers (
    id              text PRIMARY KEY CHECK (id LIKE 'cus\_%'),
    merchant_id     text NOT NULL REFERENCES merchants (id),
    email           text,
    name            text,
    description     text,
    phone           text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX customers_merchant_created ON customers (merchant_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX customers_merchant_email ON customers (merchant_id, email, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
