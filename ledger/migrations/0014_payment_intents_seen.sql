-- A PaymentIntent as the API shows it: its own row and what its latest charge received. The intent follows
-- its charge (each charge transition that changes the intent writes the intent's in the same statement),
-- so these columns only read what is already decided.
CREATE VIEW payment_intents_seen AS
SELECT i.id, i.merchant_id, i.amount, i.currency, i.capture_method, i.payment_method, i.customer,
       i.description, i.metadata, i.state, i.charge_id, i.last_payment_error, i.cancellation_reason,
       i.canceled_at, i.idempotency_key, i.created_at,
       CASE WHEN i.state = 'succeeded' THEN coalesce(p.amount_captured, p.amount) ELSE 0 END AS amount_received
FROM payment_intents i LEFT JOIN payments p ON p.id = i.charge_id;
