-- A customer's charges, newest first (GET /v1/charges?customer=cus_…), without reading the merchant's others.
CREATE INDEX payments_merchant_customer_created ON payments (merchant_id, customer, created_at DESC, id DESC)
    WHERE customer IS NOT NULL;

-- What an update changed (Stripe's data.previous_attributes), on the *.updated events; NULL on the others.
ALTER TABLE outbox ADD COLUMN previous_attributes jsonb;
