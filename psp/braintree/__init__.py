"""Braintree behind the PSP port, through its official SDK (``adapter.BraintreePsp``)."""
