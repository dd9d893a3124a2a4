-- What the notification consumers delivered, once per outbox row (a redelivered stream entry finds its row).
CREATE TABLE notification_deliveries (
    outbox_id    bigint PRIMARY KEY REFERENCES outbox (id),
    topic        text NOT NULL,
    aggregate_id text NOT NULL,
    payload      jsonb NOT NULL,
    consumer     text NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now()
);
