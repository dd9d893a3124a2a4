"""The double-entry ledger: pure postings, SQL store, migrations and reconciliation."""
