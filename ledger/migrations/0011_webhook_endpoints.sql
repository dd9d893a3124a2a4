-- Webhook endpoints: where a merchant wants its events POSTed, signed with the endpoint's secret. The secret
-- is kept as given (each delivery signs with it). A deleted endpoint keeps its row for its deliveries' record.
CREATE TABLE webhook_endpoints (
    id             text PRIMARY KEY,
    merchant_id    text NOT NULL,
    url            text NOT NULL,
    enabled_events text[] NOT NULL,
    description    text,
    metadata       jsonb NOT NULL DEFAULT '{}',
    api_version    text,
    secret         text NOT NULL,
    status         text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id, created_at, id)
    WHERE deleted_at IS NULL;

-- One delivery per (endpoint, event): pending until a 2xx (succeeded), or until its retry window is over
-- (failed), or its endpoint is disabled for failing (abandoned). A resend by hand makes it pending again.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id),
    outbox_id       bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    merchant_id     text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'abandoned')),
    attempts        integer NOT NULL DEFAULT 0,
    began_at        timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, outbox_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (outbox_id);

-- Every attempt: its HTTP status, or the error when there was none, and how long it took.
CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  text NOT NULL,
    outbox_id    bigint NOT NULL,
    attempt      integer NOT NULL,
    http_status  integer,
    error        text,
    duration_ms  integer NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);
