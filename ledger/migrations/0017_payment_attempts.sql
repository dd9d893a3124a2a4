-- A payment's attempts, one per PSP it tried. The payment row holds its current attempt (``psp``, with the
-- ``psp_idempotency_key`` and ``psp_reference`` it already had), so a payment that never fails over costs
-- no extra row; ``payment_attempts`` keeps each attempt that ended in a definite failure before the payment
-- went on to its next PSP. Every payment made before there was a second PSP went to Stripe.
ALTER TABLE payments ADD COLUMN psp text NOT NULL DEFAULT 'stripe'
    CHECK (psp IN ('stripe', 'braintree'));

CREATE TABLE payment_attempts (
    idempotency_key text PRIMARY KEY,      -- the attempt's id, sent to its PSP as the idempotency key
    payment_id      text NOT NULL REFERENCES payments (id),
    psp             text NOT NULL CHECK (psp IN ('stripe', 'braintree')),
    psp_reference   text,
    ended           text NOT NULL,         -- not_sent | refused | declined (payray/routing.py AttemptEnd)
    failure_code    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (payment_id, psp)
);
