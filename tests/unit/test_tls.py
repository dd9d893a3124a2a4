"""The local CA, the certificate checks behind ``payray up --tls`` and the TLS front's configuration."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from ops.loopback import loopback_haproxy_config
from ops.stack import EdgeTls, haproxy_binary
from ops.tls import Authority, CertificateError, KeyPair, check_ca_file, check_pair, hosts_of, trust_stack_ca
from ops.tls_cli import edge_tls
from ops.tls_front import front_config


def _leaf(pair: KeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def test_the_local_ca_is_made_once_and_its_leaves_verify_against_it(tmp_path: Path) -> None:
    ca = Authority.load_or_create(tmp_path)
    assert Authority.load_or_create(tmp_path).cert == ca.cert  # kept: clients trust it once
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    pair = ca.issue(tmp_path, "server", ["127.0.0.1", "localhost"])
    assert (pair.key.stat().st_mode & 0o777) == 0o600
    assert hosts_of(_leaf(pair)) == ["127.0.0.1", "localhost"]
    check_pair(pair.cert, pair.key)
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.load_cert_chain(pair.cert, pair.key)  # a pair OpenSSL takes


def test_a_kept_certificate_is_reused_until_its_hosts_change(tmp_path: Path) -> None:
    ca = Authority.load_or_create(tmp_path)
    first = ca.current(tmp_path, "server", ["127.0.0.1"])
    serial = _leaf(first).serial_number
    assert _leaf(ca.current(tmp_path, "server", ["127.0.0.1"])).serial_number == serial
    assert _leaf(ca.current(tmp_path, "server", ["127.0.0.1", "api.example"])).serial_number != serial


def test_a_certificate_near_its_end_is_renewed(tmp_path: Path) -> None:
    ca = Authority.load_or_create(tmp_path)
    short = _leaf(ca.issue(tmp_path, "server", ["127.0.0.1"], days=3)).serial_number
    assert _leaf(ca.current(tmp_path, "server", ["127.0.0.1"])).serial_number != short


def test_check_pair_names_what_is_wrong(tmp_path: Path) -> None:
    ca = trustme.CA()
    good, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    cert, key, other_key = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "o.pem"
    good.cert_chain_pems[0].write_to_path(str(cert))
    good.private_key_pem.write_to_path(str(key))
    other.private_key_pem.write_to_path(str(other_key))
    check_pair(cert, key)
    with pytest.raises(CertificateError, match="is not the key of the certificate"):
        check_pair(cert, other_key)
    with pytest.raises(CertificateError, match="not a readable PEM certificate"):
        check_pair(key, key)
    with pytest.raises(CertificateError, match="not a readable PEM certificate"):
        check_pair(tmp_path / "missing.pem", key)
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    old = ca.issue_cert("127.0.0.1", not_before=yesterday - dt.timedelta(days=9), not_after=yesterday)
    old.cert_chain_pems[0].write_to_path(str(cert))
    old.private_key_pem.write_to_path(str(key))
    with pytest.raises(CertificateError, match="not now"):
        check_pair(cert, key)


def test_a_client_ca_file_holds_ca_certificates_only(tmp_path: Path) -> None:
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    check_ca_file(path)
    ca.issue_cert("lb.example").cert_chain_pems[0].write_to_path(str(path))
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        check_ca_file(path)
    path.write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a readable PEM file"):
        check_ca_file(path)


def _up_args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"tls": False, "cert": None, "key": None, "client_ca": None, **given})


def test_up_flags_plain_by_default_and_checked_before_anything_starts(tmp_path: Path) -> None:
    assert edge_tls(_up_args()) is None
    assert edge_tls(_up_args(tls=True)) == EdgeTls()
    ca = trustme.CA()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    issued = ca.issue_cert("api.example")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    assert edge_tls(_up_args(cert=cert, key=key)) == EdgeTls(cert.resolve(), key.resolve())
    assert edge_tls(_up_args(cert=cert)) == "--cert and --key go together"
    assert "not a readable PEM file" in str(edge_tls(_up_args(tls=True, client_ca=key)))
    assert "is not the key" in str(edge_tls(_up_args(cert=cert, key=_other_key(tmp_path))))


def _other_key(tmp_path: Path) -> Path:
    path = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("x.example").private_key_pem.write_to_path(str(path))
    return path


def test_the_front_config_is_modern_tls_forwarding_to_loopback(tmp_path: Path) -> None:
    config = front_config(
        listen=("0.0.0.0", 8443),
        upstream_port=18000,
        certificate=tmp_path / "front.pem",
        admin_socket=tmp_path / "front.sock",
        client_ca=tmp_path / "clients.pem",
    )
    assert f"bind 0.0.0.0:8443 ssl crt {tmp_path / 'front.pem'}" in config
    assert f"ca-file {tmp_path / 'clients.pem'} verify required" in config
    assert "ssl-min-ver TLSv1.2" in config
    assert "server serve 127.0.0.1:18000" in config
    assert "set-header X-Forwarded-For %[src]" in config  # the client cannot name another address
    assert f"stats socket {tmp_path / 'front.sock'} mode 600" in config
    plain = front_config(
        listen=("127.0.0.1", 8443),
        upstream_port=1,
        certificate=tmp_path / "front.pem",
        admin_socket=tmp_path / "s",
    )
    assert "verify" not in plain


def test_haproxy_takes_the_front_config(tmp_path: Path) -> None:
    binary = haproxy_binary()
    assert binary, "HAProxy comes with ray[serve]"
    ca = Authority.load_or_create(tmp_path)
    pair = ca.issue(tmp_path, "server", ["127.0.0.1"])
    (tmp_path / "front.pem").write_bytes(pair.combined())
    config = tmp_path / "front.cfg"
    config.write_text(
        front_config(
            listen=("127.0.0.1", 8443),
            upstream_port=18000,
            certificate=tmp_path / "front.pem",
            admin_socket=tmp_path / "front.sock",
            client_ca=ca.cert_path,
        )
    )
    checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_behind_the_front_serves_haproxy_keeps_the_address_the_front_set() -> None:
    serve = "global\n    maxconn 10\ndefaults\n    option forwardfor\n    mode http\n"
    assert "    option forwardfor\n" in loopback_haproxy_config(serve)
    assert "    option forwardfor if-none\n" in loopback_haproxy_config(serve, behind_front=True)


def test_a_stack_ca_is_trusted_besides_what_was_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corporate, local = trustme.CA(), Authority.load_or_create(tmp_path / "tls")
    before = tmp_path / "corporate.pem"
    corporate.cert_pem.write_to_path(str(before))
    monkeypatch.setenv("SSL_CERT_FILE", str(before))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    trust_stack_ca(local.cert_path)
    bundle = Path(os.environ["SSL_CERT_FILE"])
    assert os.environ["REQUESTS_CA_BUNDLE"] == str(bundle) and bundle.parent == local.cert_path.parent
    subjects = {c.subject for c in x509.load_pem_x509_certificates(bundle.read_bytes())}
    assert subjects == {
        local.cert.subject,
        x509.load_pem_x509_certificate(corporate.cert_pem.bytes()).subject,
    }
    trust_stack_ca(local.cert_path)  # again: nothing more to add
    assert os.environ["SSL_CERT_FILE"] == str(bundle)


def test_behind_mutual_tls_the_cli_calls_the_stack_on_loopback(tmp_path: Path) -> None:
    """payray's own tools hold no client certificate: against a stack whose front asks for one they use
    Serve's loopback port; otherwise, and when given ``--url``, the URL merchants use."""
    from ops.cli import _target
    from payray.settings import STACK_FILE, Settings

    settings = Settings(home=tmp_path, admin_key="sk_admin_x")
    stored = {"base_url": "https://127.0.0.1:8000", "admin_key": "sk_admin_x"}
    (tmp_path / STACK_FILE).write_text(json.dumps(stored))
    args = argparse.Namespace(url=None, admin_key=None)
    assert _target(settings, args) == ("https://127.0.0.1:8000", "sk_admin_x")
    (tmp_path / STACK_FILE).write_text(json.dumps({**stored, "local_url": "http://127.0.0.1:41234"}))
    assert _target(settings, args) == ("http://127.0.0.1:41234", "sk_admin_x")
    given = argparse.Namespace(url="https://api.example", admin_key=None)
    assert _target(settings, given) == ("https://api.example", "sk_admin_x")
