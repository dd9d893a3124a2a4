"""How the SDK reaches Braintree (or the emulator, by base URL): an environment per URL, and an HTTP layer
that always verifies certificates, which the SDK alone does not when an environment has no certificate
file."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import braintree
import requests
from braintree.util.http import Http

from psp.port import (
    PspConfigurationError,
)
from psp.tls_trust import outbound_ssl_context


class UrlEnvironment(braintree.Environment):
    """An environment at a base URL. The SDK's own picks https only for port 443; this one follows the
    URL's scheme."""

    @property
    def protocol(self) -> str:
        return "https://" if self.is_ssl else "http://"


def environment_of(environment: str) -> Any:
    """``sandbox``/``production`` → the SDK's environments; a base URL (``http://127.0.0.1:8420``,
    ``https://psp.internal``) → an environment at that address."""
    named = {"sandbox": braintree.Environment.Sandbox, "production": braintree.Environment.Production}
    if environment in named:
        return named[environment]
    url = urlsplit(environment)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise PspConfigurationError(
            f"Braintree environment must be sandbox, production or a URL: {environment!r}"
        )
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    return UrlEnvironment("emulator", url.hostname, str(port), "", https, None)


def environment_ssl_context(environment: Any, ca_bundle: str | None) -> ssl.SSLContext:
    """Braintree's own environments trust the CA file the SDK ships (its pinning) and ``ca_bundle``; a URL
    trusts the defaults plus ``ca_bundle`` (``psp.tls_trust``)."""
    pinned = getattr(environment, "ssl_certificate", None)
    if not pinned:
        return outbound_ssl_context(ca_bundle)
    context = ssl.create_default_context(cafile=pinned)
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class VerifyingAdapter(requests.adapters.HTTPAdapter):
    """Verifies every HTTPS peer against ``ssl_context``, whatever ``verify`` the SDK passes: it passes its
    environment's CA file, or ``None`` (no verification at all) for an environment without one."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, ssl_context=self._ssl_context, **pool_kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return super().build_connection_pool_key_attributes(request, True, cert)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, True, cert)
        # the context holds the CAs; a file named here would be loaded into the shared context
        conn.ca_certs = None
        conn.ca_cert_dir = None


class VerifyingHttp(Http):
    """The SDK's HTTP strategy with its per-thread sessions verifying through ``VerifyingAdapter``, and
    closable from any thread (the SDK's ``close`` reaches only the calling thread's session)."""

    def __init__(self, config: Any, environment: Any, *, ssl_context: ssl.SSLContext) -> None:
        super().__init__(config, environment)
        self._ssl_context = ssl_context
        self._sessions: list[requests.Session] = []

    def _get_session(self) -> requests.Session:
        session: requests.Session = super()._get_session()
        if not isinstance(session.get_adapter("https://"), VerifyingAdapter):
            session.mount("https://", VerifyingAdapter(self._ssl_context))
            self._sessions.append(session)
        return session

    def close(self) -> None:
        super().close()
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


# -- the adapter ------
