"""The TLS front (HAProxy) in front of the running stack: HTTPS for merchants, mutual TLS for a load balancer,
a certificate rotated under load. Certificates are minted here with trustme; clients are real (httpx, raw
TLS sockets, Stripe's Python and Node SDKs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import stripe
import trustme
from cryptography import x509

from ops.loopback import free_port
from ops.stack import StackInfo, haproxy_binary
from ops.tls import KeyPair
from ops.tls_front import TlsFront
from tests.integration.node_checks import NODE_CHECKS
from tests.integration.polling import until
from tests.integration.psp_queries import captures_for_merchant
from tests.integration.stack_fixtures import Merchant

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_hold")]

HOSTS = ("127.0.0.1", "localhost")


def _pair(cert: trustme.LeafCert, directory: Path, stem: str) -> KeyPair:
    pair = KeyPair(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    cert.cert_chain_pems[0].write_to_path(str(pair.cert))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(pair.cert), append=True)
    cert.private_key_pem.write_to_path(str(pair.key))
    return pair


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="load balancers")


@pytest.fixture(scope="module")
def ca_file(server_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    server_ca.cert_pem.write_to_path(str(path))
    return path


def _front(stack: StackInfo, directory: Path, certificate: KeyPair, client_ca: Path | None) -> TlsFront:
    binary = haproxy_binary()
    assert binary, "HAProxy comes with ray[serve]"
    upstream = urlsplit(stack.base_url).port
    assert upstream is not None
    return TlsFront(binary, directory, "127.0.0.1", free_port(), upstream, certificate, client_ca=client_ca)


@pytest.fixture(scope="module")
def front(
    stack: StackInfo, server_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsFront]:
    directory = tmp_path_factory.mktemp("front")
    running = _front(stack, directory, _pair(server_ca.issue_cert(*HOSTS), directory, "server"), None)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def mtls_front(
    stack: StackInfo, server_ca: trustme.CA, client_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsFront]:
    directory = tmp_path_factory.mktemp("mtls-front")
    clients = directory / "clients-ca.pem"
    client_ca.cert_pem.write_to_path(str(clients))
    running = _front(stack, directory, _pair(server_ca.issue_cert(*HOSTS), directory, "server"), clients)
    running.start()
    yield running
    running.stop()


def _https(front: TlsFront, ca_file: Path, api_key: str, cert: KeyPair | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return httpx.Client(
        base_url=front.url, verify=context, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


def _charge(client: httpx.Client, key: str, amount: int = 1000) -> httpx.Response:
    body = {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa"}
    return client.post("/v1/charges", data=body, headers={"Idempotency-Key": key})


def _served_serial(port: int, ca_file: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_charge_replay_and_refund_over_https_with_stripes_sdk(
    front: TlsFront, ca_file: Path, merchant: Merchant, psp_control: httpx.Client
) -> None:
    http_client = stripe.RequestsClient(verify_ssl_certs=True)
    default_bundle, stripe.ca_bundle_path = stripe.ca_bundle_path, str(ca_file)
    try:
        client = stripe.StripeClient(
            merchant.api_key, base_addresses={"api": front.url}, http_client=http_client
        )
        params: dict[str, object] = {"amount": 2500, "currency": "usd", "source": "tok_visa"}
        charge = client.v1.charges.create(params, {"idempotency_key": "tls-1"})
        again = client.v1.charges.create(params, {"idempotency_key": "tls-1"})
        assert charge.status == "succeeded" and again.id == charge.id
        refund = client.v1.refunds.create({"charge": charge.id, "amount": 1000})
        assert refund.status == "succeeded"
        assert client.v1.charges.retrieve(charge.id).amount_refunded == 1000
    finally:
        stripe.ca_bundle_path = default_bundle
    assert len(captures_for_merchant(psp_control, merchant.id)) == 1  # the key used twice captured once


def test_the_front_speaks_modern_tls_only(front: TlsFront, ca_file: Path, merchant: Merchant) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((front.host, front.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"
    tls12 = ssl.create_default_context(cafile=str(ca_file))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((front.host, front.port)) as raw,
        tls12.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert (
            cipher is not None
            and cipher[0].startswith("ECDHE-")
            and ("GCM" in cipher[0] or "CHACHA" in cipher[0])
        )
    # a client that offers no forward-secret suite gets no connection
    static_rsa = ssl.create_default_context(cafile=str(ca_file))
    static_rsa.maximum_version = ssl.TLSVersion.TLSv1_2
    static_rsa.set_ciphers("AES128-SHA:AES256-SHA:AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError), socket.create_connection((front.host, front.port)) as raw:
        static_rsa.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_http_to_the_tls_port_gets_no_answer(front: TlsFront, merchant: Merchant) -> None:
    body = b"amount=1000&currency=usd&payment_method=pm_card_visa"
    request = (
        b"POST /v1/charges HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + merchant.api_key.encode() + b"\r\nIdempotency-Key: plain-1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection((front.host, front.port), timeout=10) as raw:
        raw.sendall(request)
        answer = b""
        try:
            while chunk := raw.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert merchant.client.get("/v1/charges").json()["data"] == []


def _refused(front: TlsFront, ca_file: Path, merchant: Merchant, cert: KeyPair | None, alert: str) -> None:
    """A charge sent with ``cert`` never gets an HTTP answer: the handshake ends with TLS ``alert``."""
    with (
        _https(front, ca_file, merchant.api_key, cert) as client,
        pytest.raises(httpx.TransportError) as raised,
    ):
        _charge(client, "mtls-" + uuid.uuid4().hex)
    assert f"alert {alert}" in str(raised.value), raised.value


def test_mutual_tls_refuses_every_certificate_but_the_right_one(
    mtls_front: TlsFront,
    ca_file: Path,
    client_ca: trustme.CA,
    merchant: Merchant,
    tmp_path: Path,
) -> None:
    stranger = _pair(trustme.CA().issue_cert("lb.example"), tmp_path, "stranger")
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    expired = _pair(
        client_ca.issue_cert("lb.example", not_before=yesterday - dt.timedelta(days=30), not_after=yesterday),
        tmp_path,
        "expired",
    )
    right = _pair(client_ca.issue_cert("lb.example"), tmp_path, "right")

    _refused(mtls_front, ca_file, merchant, None, "certificate required")
    _refused(mtls_front, ca_file, merchant, stranger, "unknown ca")
    _refused(mtls_front, ca_file, merchant, expired, "certificate expired")
    assert merchant.client.get("/v1/charges").json()["data"] == []  # nothing got through

    with _https(mtls_front, ca_file, merchant.api_key, right) as client:
        answer = _charge(client, "mtls-right")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "succeeded"


def test_a_certificate_rotated_under_load_drops_no_request(
    front: TlsFront, server_ca: trustme.CA, ca_file: Path, merchant: Merchant, tmp_path: Path
) -> None:
    """Keep-alive clients and fresh connections charge throughout five rotations: every request answers
    200, and handshakes after a rotation see the new certificate."""
    statuses: list[int | str] = []
    stop = threading.Event()

    def load(fresh_connections: bool) -> None:
        client = _https(front, ca_file, merchant.api_key)
        try:
            while not stop.is_set():
                if fresh_connections:
                    client.close()
                    client = _https(front, ca_file, merchant.api_key)
                try:
                    statuses.append(_charge(client, uuid.uuid4().hex, amount=100).status_code)
                except httpx.HTTPError as exc:
                    statuses.append(repr(exc))
        finally:
            client.close()

    workers = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(5):
            until(lambda enough=10 * (round_ + 1): len(statuses) >= enough, timeout_s=60)
            before = _served_serial(front.port, ca_file)
            front.rotate(_pair(server_ca.issue_cert(*HOSTS), tmp_path, f"server-{round_}"))
            assert _served_serial(front.port, ca_file) != before
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert len(statuses) >= 50
    assert set(statuses) == {200}, [s for s in statuses if s != 200][:5]


def test_a_killed_front_is_started_again(front: TlsFront, ca_file: Path, merchant: Merchant) -> None:
    pid = front.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    until(lambda: front.pid != pid, timeout_s=10)

    def answers() -> bool:
        with _https(front, ca_file, merchant.api_key) as client:
            try:
                return client.get("/v1/balance").status_code == 200
            except httpx.TransportError:
                return False

    until(answers, timeout_s=10)


def test_stripe_node_over_https(front: TlsFront, ca_file: Path, node: str, merchant: Merchant) -> None:
    """stripe-node trusts the front through NODE_EXTRA_CA_CERTS, as a merchant's backend would."""
    checks = [
        "charges_create_retrieve_list",
        "same_idempotency_key_same_charge",
        "refunds_partial_then_too_much",
    ]
    ran = subprocess.run(
        [node, "checks.mjs", front.url, merchant.api_key, *checks],
        cwd=NODE_CHECKS,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file)},
    )
    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(out) for out in ran.stdout.splitlines() if out.startswith("{")]
    assert lines == [{"check": check, "ok": True} for check in checks]


def test_payray_tls_front_alone_serves_and_rotates(
    stack: StackInfo, server_ca: trustme.CA, ca_file: Path, merchant: Merchant, tmp_path: Path
) -> None:
    """``payray tls front`` as on a cluster's ingress node: HTTPS for Serve's port on loopback, a certificate
    rotated by ``payray tls rotate`` from another process, and nothing left behind when interrupted."""
    home = tmp_path / "home"
    served = _pair(server_ca.issue_cert(*HOSTS), tmp_path, "first")
    port, upstream = free_port(), urlsplit(stack.base_url).port
    env = {**os.environ, "PAYRAY_HOME": str(home)}
    command = [sys.executable, "-m", "ops.cli", "tls", "front", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--upstream-port", str(upstream), "--cert", str(served.cert), "--key", str(served.key)]
    front = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert front.stdout is not None
        assert f"TLS front at https://127.0.0.1:{port}" in front.stdout.readline()
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            headers = {"Authorization": f"Bearer {merchant.api_key}", "Idempotency-Key": uuid.uuid4().hex}
            body = {"amount": "700", "currency": "usd", "payment_method": "pm_card_visa"}
            assert client.post("/v1/charges", data=body, headers=headers).status_code == 200
        new = _pair(server_ca.issue_cert(*HOSTS), tmp_path, "second")
        rotated = subprocess.run(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "tls",
                "rotate",
                "--cert",
                str(new.cert),
                "--key",
                str(new.key),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotated.returncode == 0, rotated.stderr
        expected = x509.load_pem_x509_certificate(new.cert.read_bytes()).serial_number
        assert _served_serial(port, ca_file) == expected
    finally:
        front.send_signal(signal.SIGINT)
        assert front.wait(timeout=30) == 0
    assert not (home / "tls" / "front" / "front.json").exists()
