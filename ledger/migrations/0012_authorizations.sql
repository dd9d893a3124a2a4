-- Authorizations and PaymentIntents. A charge made with capture=false (or confirmed by an intent with
-- capture_method=manual) is authorized at the PSP and held in the ledger, outside the merchant's available
-- balance, until it is captured (in full or in part) or released (canceled, or expired after 7 days).

INSERT INTO account_types (name, normal_side, scope, description) VALUES
    ('psp_authorized',  'debit',  'house',    'authorized at the PSP, not yet captured or released'),
    ('authorized_hold', 'credit', 'merchant', 'a merchant''s authorized charges: not its money until captured');

CREATE TABLE payment_intents (
    id                  text PRIMARY KEY CHECK (id LIKE 'pi\_%'),
    merchant_id         text NOT NULL REFERENCES merchants (id),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    capture_method      text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    payment_method      text,
    customer            text,
    description         text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    state               text NOT NULL,
    charge_id           text,  -- the latest charge: the one its last confirmation made
    last_payment_error  jsonb,
    cancellation_reason text,
    canceled_at         timestamptz,
    idempotency_key     text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_intents_merchant_created ON payment_intents (merchant_id, created_at DESC, id DESC);
CREATE INDEX payment_intents_customer ON payment_intents (merchant_id, customer, created_at DESC, id DESC)
    WHERE customer IS NOT NULL;

CREATE TABLE payment_intent_transitions (
    id                bigserial PRIMARY KEY,
    payment_intent_id text NOT NULL REFERENCES payment_intents (id),
    from_state        text,
    event             text NOT NULL,
    to_state          text NOT NULL,
    detail            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_intent_transitions_intent ON payment_intent_transitions (payment_intent_id, id);

ALTER TABLE payments
    ADD COLUMN capture_method    text NOT NULL DEFAULT 'automatic'
        CHECK (capture_method IN ('automatic', 'manual')),
    ADD COLUMN amount_captured   bigint CHECK (amount_captured > 0 AND amount_captured <= amount),
    ADD COLUMN payment_intent_id text REFERENCES payment_intents (id),
    -- why an authorization was released: the merchant's reason, or 'expired'
    ADD COLUMN cancellation_reason text;

ALTER TABLE payment_intents
    ADD CONSTRAINT payment_intents_charge FOREIGN KEY (charge_id) REFERENCES payments (id);

-- What recovery looks at: the unfinished charges, now that an authorization rests (requires_capture) and a
-- released one ends (canceled); and the authorizations that expire.
DROP INDEX payments_unfinished;
CREATE INDEX payments_unfinished ON payments (updated_at)
    WHERE state NOT IN ('succeeded', 'declined', 'failed', 'compensated', 'requires_capture', 'canceled');
CREATE INDEX payments_authorized ON payments (created_at) WHERE state = 'requires_capture';
CREATE INDEX payments_intent ON payments (payment_intent_id) WHERE payment_intent_id IS NOT NULL;
