"""Certificates for a stack of one's own: a local certificate authority under ``$PAYRAY_HOME/tls/``, and the
certificates it signs for the API's TLS front, the PSP emulator and the nodes of a Ray cluster.

A real deployment brings its own certificates (``payray up --cert/--key``); a local one needs a CA that
clients can be told to trust (``curl --cacert``, ``stripe.ca_bundle_path``, ``NODE_EXTRA_CA_CERTS``), and
leaf certificates naming 127.0.0.1 and this machine. Keys are EC P-256 and stay readable by their owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ops.private_files import write_private

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
#: How long a certificate the local CA signs lasts, and how close to its end it is renewed on start.
LEAF_DAYS = 90
RENEW_WITHIN_DAYS = 14
CA_DAYS = 10 * 365
#: A host name: dot-separated labels of letters, digits and inner hyphens.
DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


class CertificateError(ValueError):
    """A certificate or key that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate (PEM, leaf first) and its private key, as files."""

    cert: Path
    key: Path

    def combined(self) -> bytes:
        """Certificate chain then key in one PEM: what HAProxy's ``crt`` takes."""
        return self.cert.read_bytes().rstrip(b"\n") + b"\n" + self.key.read_bytes()


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file (what clients trust) and the key it signs with."""

    cert_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "payray local CA") -> Authority:
        """The CA kept in ``directory``, made on first use: it survives restarts, so clients trust it once."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertificateError(f"{key_path}: not an EC key")
            return cls(cert_path, cert, key)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signing=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert_path, cert, key)

    def issue(
        self,
        directory: Path,
        stem: str,
        hosts: Sequence[str],
        *,
        server: bool = True,
        client: bool = False,
        days: int = LEAF_DAYS,
    ) -> KeyPair:
        """A leaf certificate for ``hosts`` (IP addresses or DNS names), written as ``<stem>.pem`` and
        ``<stem>-key.pem`` in ``directory``. Ray's TLS is mutual, so its nodes' certificates serve both."""
        if not hosts:
            raise CertificateError("a certificate names at least one host")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        purposes = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signing=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
            .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
        write_private(pair.key, _key_pem(key))
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def current(self, directory: Path, stem: str, hosts: Sequence[str], *, client: bool = False) -> KeyPair:
        """``<stem>``'s certificate as kept, or a new one when missing, near its end, for other hosts or
        signed by another CA."""
        pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
        if pair.cert.exists() and pair.key.exists():
            cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
            fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_WITHIN_DAYS)
            if fresh and cert.issuer == self.cert.subject and set(hosts_of(cert)) == set(hosts):
                return pair
        return self.issue(directory, stem, hosts, client=client)


def trust_stack_ca(ca_file: Path) -> None:
    """Make this process and its children trust ``ca_file`` (a stack's local CA) besides what they trust
    already: the CAs of ``SSL_CERT_FILE`` (or certifi's) and it, in one bundle next to it, which
    ``SSL_CERT_FILE`` (read by urllib, httpx and Locust) and ``REQUESTS_CA_BUNDLE`` (requests) then name."""
    import hashlib

    import certifi

    trusted = os.environ.get("SSL_CERT_FILE") or certifi.where()
    if Path(trusted).parent == ca_file.parent:  # this process trusts it already
        return
    tag = hashlib.sha256(trusted.encode()).hexdigest()[:12]
    bundle = ca_file.with_name(f"trust-{tag}.pem")
    staged = bundle.with_name(bundle.name + f".{os.getpid()}")
    staged.write_text(Path(trusted).read_text().rstrip("\n") + "\n" + ca_file.read_text())
    os.replace(staged, bundle)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)


def check_pair(cert_path: Path, key_path: Path) -> x509.Certificate:
    """The leaf certificate of ``cert_path`` when it and ``key_path`` can serve TLS: both PEM, the key the
    certificate's, the certificate valid now. Otherwise a :class:`CertificateError` saying which."""
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{cert_path}: not a readable PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not a readable, unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise CertificateError(f"{key_path} is not the key of the certificate in {cert_path}")
    now = _now()
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise CertificateError(
            f"{cert_path} is valid from {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    return leaf


def check_ca_file(path: Path) -> None:
    """A file of one or more CA certificates in PEM, or a :class:`CertificateError`."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a readable PEM file of CA certificates ({exc})") from None
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CertificateError(f"{path}: {cert.subject.rfc4514_string()} is not a CA certificate")


def hosts_of(cert: x509.Certificate) -> list[str]:
    """The IP addresses and DNS names a certificate is for."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in names if isinstance(n, (x509.DNSName, x509.IPAddress))]


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not DNS_NAME.fullmatch(host):
        raise CertificateError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_bytes(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        raise CertificateError("an unsupported key type")
    return bytes(public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
