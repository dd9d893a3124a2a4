"""Which certificate authorities outbound HTTPS trusts: the defaults, plus an optional bundle of our own.

Used for every request payray makes out (the PSP's API and its report files, webhooks to merchants) and for
the emulator's webhooks. A PSP behind a private CA, a merchant's endpoint signed by an in-house CA or a
test's local CA is trusted by adding that CA to the defaults, never by replacing them and never by turning
verification off, so every other peer is verified as before. It lives here, not in ``payray/``, because
the core imports only the standard library and the defaults include certifi's.
"""

from __future__ import annotations

import functools
import ssl

import certifi


@functools.cache
def outbound_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the peer's certificate and host name against the system's CAs,
    certifi's, and those of ``ca_bundle`` (a PEM file) if given.

    Built once per bundle and shared (loading the default CAs takes tens of milliseconds), so change nothing
    in it; the bundle is read then, and a changed file takes effect on restart. A file that holds no PEM
    certificate raises ``ssl.SSLError``, a missing one ``OSError``.
    """
    context = ssl.create_default_context()  # the system's CAs, CERT_REQUIRED, host names checked
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    return context
