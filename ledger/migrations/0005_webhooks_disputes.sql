-- PSP webhooks applied exactly once, and disputes.

-- One row per PSP event applied, written in the same transaction as the event's effect: a redelivered event
-- finds its row and changes nothing.
CREATE TABLE webhook_events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    object_id   text,
    effect      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

-- A dispute moves its amount from the merchant's balance to a hold (opening → open), and the hold back
-- (won) or out to the PSP (lost); the closing_* states are "decided, not yet booked".
CREATE TABLE disputes (
    id             text PRIMARY KEY CHECK (id LIKE 'du\_%'),
    merchant_id    text NOT NULL REFERENCES merchants (id),
    payment_id     text NOT NULL REFERENCES payments (id),
    psp_dispute_id text NOT NULL UNIQUE,
    amount         bigint NOT NULL CHECK (amount > 0),
    currency       text NOT NULL,
    reason         text,
    status         text NOT NULL
        CHECK (status IN ('opening', 'open', 'closing_won', 'closing_lost', 'won', 'lost')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX disputes_merchant_created ON disputes (merchant_id, created_at DESC, id DESC);
CREATE INDEX disputes_unfinished ON disputes (updated_at) WHERE status NOT IN ('open', 'won', 'lost');
