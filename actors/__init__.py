"""Ray actors wrapping plain, Ray-free classes: ledger writers and per-merchant wallets."""
