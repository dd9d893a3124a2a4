"""The background workers: Ray actors for recovery, nightly reconciliation, the outbox relay and consumers."""
