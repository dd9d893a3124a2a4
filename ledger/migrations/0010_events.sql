-- The outbox rows are the merchant's events (GET /v1/events): each gets its public id (evt_…), the merchant
-- it belongs to and the idempotency key of the request behind it, and its topic is one of Stripe's event types.

ALTER TABLE outbox
    ADD COLUMN event_id        text NOT NULL DEFAULT 'evt_' || replace(gen_random_uuid()::text, '-', ''),
    ADD COLUMN merchant_id     text,
    ADD COLUMN idempotency_key text;

-- Rows from before: the merchant and key of the object each announced.
UPDATE outbox o SET (merchant_id, idempotency_key) = (
    SELECT s.merchant_id, s.idempotency_key FROM (
        SELECT merchant_id, idempotency_key FROM payments WHERE id = o.aggregate_id
        UNION ALL SELECT merchant_id, idempotency_key FROM refunds WHERE id = o.aggregate_id
        UNION ALL SELECT merchant_id, idempotency_key FROM payouts WHERE id = o.aggregate_id
        UNION ALL SELECT merchant_id, NULL FROM disputes WHERE id = o.aggregate_id
    ) s LIMIT 1
);

-- Topics from before, as Stripe names them.
UPDATE outbox SET topic = CASE topic
    WHEN 'payout.in_transit' THEN 'payout.created'
    WHEN 'refund.pending' THEN 'refund.created'
    WHEN 'refund.succeeded' THEN 'refund.created'
    WHEN 'dispute.needs_response' THEN 'charge.dispute.created'
    WHEN 'dispute.won' THEN 'charge.dispute.closed'
    WHEN 'dispute.lost' THEN 'charge.dispute.closed'
    ELSE topic END
WHERE topic IN ('payout.in_transit', 'refund.pending', 'refund.succeeded', 'dispute.needs_response',
                'dispute.won', 'dispute.lost');

CREATE UNIQUE INDEX outbox_event_id ON outbox (event_id);
CREATE INDEX outbox_merchant_events ON outbox (merchant_id, id) WHERE merchant_id IS NOT NULL;
CREATE INDEX outbox_aggregate ON outbox (aggregate_id);
CREATE INDEX outbox_expiring ON outbox (created_at) WHERE published_at IS NOT NULL;

-- Expired events go with the record of their delivery.
ALTER TABLE notification_deliveries
    DROP CONSTRAINT notification_deliveries_outbox_id_fkey,
    ADD CONSTRAINT notification_deliveries_outbox_id_fkey
        FOREIGN KEY (outbox_id) REFERENCES outbox (id) ON DELETE CASCADE;
