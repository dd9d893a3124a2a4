"""The flows: each resource's driver of its state machine against the stores, the PSP and the wallets."""
