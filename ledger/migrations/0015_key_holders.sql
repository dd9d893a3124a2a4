-- Who holds a key's lease: the Postgres application_name of the API process whose request claimed it. When
-- that process is gone (no session of it left in pg_stat_activity), a retry takes the key over at once
-- instead of waiting out the lease: a replica lost costs its requests in flight, not a minute of 409s.
ALTER TABLE idempotency_keys ADD COLUMN holder text;
