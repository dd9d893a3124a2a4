-- Each merchant's PSPs, in the order a new payment tries them. A merchant without a row routes to Stripe
-- alone, as before there was a second PSP. The names are the adapters payray has (payray/routing.py).
CREATE TABLE merchant_psp_routing (
    merchant_id text PRIMARY KEY REFERENCES merchants (id),
    psps        text[] NOT NULL CHECK (
        cardinality(psps) BETWEEN 1 AND 2 AND psps <@ ARRAY['stripe', 'braintree']::text[]
    ),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
