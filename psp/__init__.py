"""The PSP edge: the port the payment service depends on, the Stripe adapter, and the local emulator."""
