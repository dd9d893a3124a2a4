"""A Stripe-compatible PSP emulator with fault injection."""
