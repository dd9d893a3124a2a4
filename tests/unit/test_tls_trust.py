"""Outbound TLS trust: ``PAYRAY_CA_BUNDLE`` is refused at start unless it names a PEM file of certificates,
and the context built with it trusts that CA on top of the defaults, never instead of them (real handshakes,
in memory)."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import certifi
import pytest
import trustme

from payray.settings import Settings
from psp.tls_trust import outbound_ssl_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(path)
    return path


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> None:
    """A TLS handshake between the two contexts through memory; raises what the client's checks raise."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=host)
    server_side = server.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def serving(ca: trustme.CA, *hosts: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


def test_no_bundle_is_none() -> None:
    assert Settings.from_env({}).ca_bundle is None
    assert Settings.from_env({"PAYRAY_CA_BUNDLE": ""}).ca_bundle is None


def test_a_pem_bundle_is_accepted_and_carried_to_the_webhook_policy(bundle: Path) -> None:
    settings = Settings.from_env({"PAYRAY_CA_BUNDLE": str(bundle)})
    assert settings.ca_bundle == str(bundle)
    assert settings.webhook_delivery().ca_bundle == str(bundle)


def test_a_missing_bundle_is_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"PAYRAY_CA_BUNDLE must name a PEM file .*: no such file"):
        Settings.from_env({"PAYRAY_CA_BUNDLE": str(tmp_path / "absent.pem")})
    with pytest.raises(ValueError, match=r"PAYRAY_CA_BUNDLE .*: not a file"):
        Settings.from_env({"PAYRAY_CA_BUNDLE": str(tmp_path)})


@pytest.mark.parametrize(
    "content",
    [
        b"not a certificate\n",
        bytes(range(256)),  # binary, as a DER file would be
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    ],
    ids=["text", "binary", "broken-pem"],
)
def test_a_file_without_a_pem_certificate_is_refused_naming_the_variable(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^PAYRAY_CA_BUNDLE must name a PEM file of CA certificates"):
        Settings.from_env({"PAYRAY_CA_BUNDLE": str(path)})


def test_a_private_key_alone_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    ca.private_key_pem.write_to_path(path)
    with pytest.raises(ValueError, match="PAYRAY_CA_BUNDLE"):
        Settings.from_env({"PAYRAY_CA_BUNDLE": str(path)})


def test_the_context_trusts_the_bundles_ca(ca: trustme.CA, bundle: Path) -> None:
    handshake(outbound_ssl_context(str(bundle)), serving(ca, "127.0.0.1", "localhost"), "localhost")


def test_without_the_bundle_the_same_server_is_refused(ca: trustme.CA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(outbound_ssl_context(), serving(ca, "localhost"), "localhost")


def test_another_cas_server_and_a_wrong_host_name_are_refused_even_with_the_bundle(
    ca: trustme.CA, bundle: Path
) -> None:
    context = outbound_ssl_context(str(bundle))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, serving(trustme.CA(), "localhost"), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, serving(ca, "localhost"), "psp.example")


def test_the_bundle_adds_to_the_default_cas_and_verification_stays_on(bundle: Path) -> None:
    context = outbound_ssl_context(str(bundle))
    trusted = set(context.get_ca_certs(binary_form=True))
    defaults = set(ssl.create_default_context().get_ca_certs(binary_form=True))
    certifis = {ssl.PEM_cert_to_DER_cert(pem) for pem in _pems(Path(certifi.where()).read_text())}
    ours = ssl.PEM_cert_to_DER_cert(bundle.read_text())
    assert certifis and defaults <= trusted and certifis <= trusted and ours in trusted
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_REQUIRED, True)


def _pems(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL)
