-- The capture fee is stored with the payment, decided once when the payment is created, so the capture,
-- its compensation and every refund's share of it read one number instead of recomputing it from a rate
-- that may have changed since.

ALTER TABLE payments ADD COLUMN fee bigint;

-- Payments from before: the fee their capture booked (its platform_fees line; none for a zero fee), or, not
-- captured yet, the fee rule (payray.fees.fee_for) at the default rate of 290 basis points: rounded half
-- up, never more than the amount.
UPDATE payments p SET fee = CASE
    WHEN EXISTS (SELECT 1 FROM ledger_transactions t WHERE t.kind = 'capture' AND t.external_ref = p.id)
    THEN coalesce((
        SELECT sum(e.amount)
        FROM ledger_transactions t
        JOIN ledger_entries e ON e.transaction_id = t.id
        JOIN accounts a ON a.id = e.account_id
        WHERE t.kind = 'capture' AND t.external_ref = p.id AND a.name = 'platform_fees'
          AND e.direction = 'credit'
    ), 0)
    ELSE least(p.amount, (p.amount * 290 + 5000) / 10000)
END;

ALTER TABLE payments
    ALTER COLUMN fee SET NOT NULL,
    ADD CONSTRAINT payments_fee CHECK (fee >= 0 AND fee <= amount);
