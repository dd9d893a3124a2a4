"""The stores: each resource's SQL (psycopg 3, async), and the Redis fast path of idempotency."""
