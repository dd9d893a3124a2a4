"""Braintree's personality of the PSP emulator: the XML gateway API that Braintree's Python SDK drives.

The same emulator, clock and fault machinery as the Stripe personality; its own objects (transactions,
disputes), its own journal, credentials, fault profile and webhook endpoint.
"""
