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
CREATE INDEX payment_attempts_by_reference ON payment_attempts (psp, psp_reference)
    WHERE psp_reference IS NOT NULL;

-- Every attempt, the current one included, as reconciliation and the invariant checks read them.
CREATE VIEW all_payment_attempts AS
    SELECT psp_idempotency_key AS idempotency_key, id AS payment_id, merchant_id, psp, psp_reference,
           true AS current
    FROM payments
    UNION ALL
    SELECT a.idempotency_key, a.payment_id, p.merchant_id, a.psp, a.psp_reference, false
    FROM payment_attempts a JOIN payments p ON p.id = a.payment_id;
