"""``payray up --nodes 2 --tls``: HTTPS on the API port through the TLS front, the PSP emulator over HTTPS
(payray verifies it, and it verifies payray for its webhooks), Ray's own traffic over mutual TLS between two
nodes, a certificate rotated by ``payray tls rotate``, and still nothing listening off loopback."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from cryptography import x509

from ops.loopback import free_port, is_loopback
from ops.tls import Authority
from tests.conftest import fresh_database
from tests.e2e.running_up import RunningUp
from tests.e2e.test_loopback_only import _bound_sockets, _stack_processes
from tests.integration.polling import until

REPO = Path(__file__).resolve().parents[2]


def _served_serial(url: str, ca: Path) -> int:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _payray(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAYRAY_", "SSL_CERT", "REQUESTS_CA"))}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env={**env, "PAYRAY_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


@pytest.mark.timeout(900)
def test_a_two_node_stack_with_tls_everywhere(
    tmp_path: Path, postgres_server_url: str, redis_url: str
) -> None:
    home = tmp_path / "home"
    with fresh_database(postgres_server_url) as database_url:
        env = {"PAYRAY_DATABASE_URL": database_url, "PAYRAY_REDIS_URL": redis_url}
        up = RunningUp(home, free_port(), "--nodes", "2", "--tls", env=env)
        try:
            up.wait_until_up()
            url, key, psp = up.fields["url"], up.fields["demo merchant key"], up.fields["PSP"]
            ca = home / "tls" / "ca.pem"
            assert url.startswith("https://") and psp.startswith("https://")
            assert f"curl -s --cacert {ca} {url}/v1/charges" in "".join(up.output)

            trusted = ssl.create_default_context(cafile=str(ca))
            with httpx.Client(base_url=url, verify=trusted, timeout=60) as client:
                headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
                body = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"}
                charge = client.post("/v1/charges", data=body, headers=headers)
                assert charge.status_code == 200, charge.text
                assert charge.json()["status"] == "succeeded"  # payray verified the emulator's certificate
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{url}/v1/balance", timeout=10)  # a client that does not trust the local CA
            with pytest.raises(httpx.TransportError):
                httpx.get(url.replace("https://", "http://") + "/v1/balance", timeout=10)

            with httpx.Client(base_url=psp, verify=trusted, timeout=30) as emulator:
                # the emulator's webhooks reached payray over HTTPS, its certificate verified
                delivered = until(
                    lambda: emulator.get("/_emulator/webhooks").json()["counts"].get("delivered")
                )
                assert delivered >= 1

            _ray_traffic_is_mutual_tls(up, home)

            verify = _payray(home, "verify")  # the CLI trusts the stack's local CA
            assert verify.returncode == 0, verify.stderr
            load = _payray(home, "loadtest", "--users", "2", "--run-time", "4s", "--merchants", "2")
            assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]  # Locust verified it too

            before = _served_serial(url, ca)
            rotated = _payray(home, "tls", "rotate")
            assert rotated.returncode == 0, rotated.stderr
            assert _served_serial(url, ca) != before

            processes = _stack_processes(up.process.pid, home)
            off_loopback = [s for s in _bound_sockets(processes) if not is_loopback(s[1])]
            assert off_loopback == [], off_loopback
        finally:
            assert up.interrupt() == 0, "".join(up.output[-30:])


def _ray_traffic_is_mutual_tls(up: RunningUp, home: Path) -> None:
    """Every raylet runs with RAY_USE_TLS and its own node certificate; the GCS answers a client holding the
    drivers' certificate, and not one holding none."""
    raylets = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"]
    ours = [p for p in raylets if up.fields["ray address"] in " ".join(p.cmdline())]
    assert len(ours) == 2
    certificates = set()
    for raylet in ours:
        environ = raylet.environ()
        assert environ["RAY_USE_TLS"] == "1"
        certificates.add(environ["RAY_TLS_SERVER_CERT"])
    assert certificates == {str(home / "tls" / "ray" / f"node-{i}.pem") for i in (0, 1)}

    ray_tls = home / "tls" / "ray"
    assert _gcs_answers(up.fields["ray address"], ray_tls / "ca.pem", ray_tls / "driver.pem")
    try:
        refused = not _gcs_answers(up.fields["ray address"], ray_tls / "ca.pem", None)
    except (ssl.SSLError, ConnectionError):
        refused = True
    assert refused, "the GCS answered a client without a certificate"


def _gcs_answers(address: str, ca: Path, certificate: Path | None) -> bool:
    """Whether the GCS speaks HTTP/2 (gRPC) to a TLS client holding ``certificate`` (and its key)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if certificate is not None:
        context.load_cert_chain(certificate, certificate.with_name(certificate.stem + "-key.pem"))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        frame = tls.recv(9)
    return len(frame) == 9 and frame[3] == 4  # the server's SETTINGS frame


def test_bad_tls_flags_are_refused_before_anything_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args, message in (
        (["--cert", str(tmp_path / "missing.pem"), "--key", str(tmp_path / "k.pem")], "not a readable PEM"),
        (["--tls", "--cert", str(tmp_path / "c.pem")], "--cert and --key go together"),
        (["--client-ca", str(tmp_path / "missing.pem")], "not a readable PEM file of CA certificates"),
    ):
        refused = _payray(home, "up", "--port", str(free_port()), *args)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not home.exists()
    rotate = _payray(home, "tls", "rotate")
    assert rotate.returncode == 1 and "no TLS front runs" in rotate.stderr


@pytest.mark.timeout(600)
def test_mutual_tls_at_the_api_port_and_the_stacks_own_callers_on_loopback(tmp_path: Path) -> None:
    """``payray up --client-ca``: a merchant's backend (as a load balancer would) charges with a client
    certificate that CA signed, and is refused without one; the emulator's webhooks and payray's CLI, which
    hold none, reach the API on loopback."""
    clients = Authority.load_or_create(tmp_path / "clients", name="load balancers")
    certificate = clients.issue(tmp_path / "clients", "lb", ["lb.example"], server=False, client=True)
    home = tmp_path / "home"
    up = RunningUp(home, free_port(), "--client-ca", str(clients.cert_path))
    try:
        up.wait_until_up()
        url, key, psp = up.fields["url"], up.fields["demo merchant key"], up.fields["PSP"]
        trusted = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
        with_certificate = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
        with_certificate.load_cert_chain(certificate.cert, certificate.key)
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
        body = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"}
        with pytest.raises(httpx.TransportError, match="certificate required"):
            httpx.post(f"{url}/v1/charges", data=body, headers=headers, verify=trusted, timeout=30)
        charge = httpx.post(
            f"{url}/v1/charges", data=body, headers=headers, verify=with_certificate, timeout=60
        )
        assert charge.status_code == 200 and charge.json()["status"] == "succeeded", charge.text
        with httpx.Client(base_url=psp, verify=trusted, timeout=30) as emulator:
            counts = until(lambda: emulator.get("/_emulator/webhooks").json()["counts"] or None)
            assert counts.get("delivered", 0) >= 1 and "failed" not in counts, counts
        verify = _payray(home, "verify")
        assert verify.returncode == 0, verify.stderr
    finally:
        assert up.interrupt() == 0, "".join(up.output[-30:])
