"""Outbound HTTPS verifies certificates against the default CAs plus the configured bundle's, never fewer.

A local CA minted here (trustme) signs the certificate the PSP emulator serves HTTPS with. ``StripePsp``
trusting that CA charges through it and downloads its settlement report; one that does not sends nothing and
answers ``unknown``, as it does for a refused connection, and the same key charges once later. The webhook
worker delivers to an https endpoint the bundle's CA signed and keeps retrying one another CA signed; the
emulator's own webhooks reach an https endpoint only when given the CA with ``ca_bundle``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import stripe
import trustme
from aiohttp import web
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ledger.reconcile import REPORT_COLUMNS
from payray.webhooks import DeliveryPolicy
from psp.emulator.server import EmulatorProcess, EmulatorServer
from psp.port import PspChargeResult
from psp.stripe_adapter import StripePsp
from psp.tls_trust import outbound_ssl_context
from serve_app.stores import webhook_endpoints as store
from serve_app.stores.webhook_endpoints import WebhookEndpoint
from serve_app.workers.webhook_delivery import WebhookDispatcher
from tests.conftest import fresh_database

pytestmark = pytest.mark.integration

T = TypeVar("T")
KEY = "sk_test_outbound_tls"
SECRET = "whsec_outbound_tls"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    """A local CA, the file of its certificate (what ``PAYRAY_CA_BUNDLE`` names) and a loopback server
    certificate it signed, with its key."""

    ca: trustme.CA
    bundle: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert(LOOPBACK, "localhost")
    pki = Pki(ca, where / "ca.pem", where / "server.pem", where / "server.key")
    ca.cert_pem.write_to_path(pki.bundle)
    server.cert_chain_pems[0].write_to_path(pki.cert)
    server.private_key_pem.write_to_path(pki.key)
    return pki


@pytest.fixture(scope="module")
def psp_url(pki: Pki) -> Iterator[str]:
    """The emulator as ``python -m psp.emulator --tls-cert … --tls-key …`` serves it."""
    with EmulatorProcess(None, tls_cert=pki.cert, tls_key=pki.key) as emulator:
        assert emulator.url is not None
        yield emulator.url


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def trusting(pki: Pki) -> ssl.SSLContext:
    return outbound_ssl_context(str(pki.bundle))


def stats(psp_url: str, pki: Pki, payment_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{psp_url}/_emulator/stats", params={"payray_payment_id": payment_id}, verify=trusting(pki)
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def closed_port() -> int:
    with socket.socket() as taken:  # nobody listens on it once it is closed
        taken.bind((LOOPBACK, 0))
        port: int = taken.getsockname()[1]
    return port


async def capture(psp: StripePsp, payment_id: str) -> PspChargeResult:
    try:
        return await psp.capture(
            payment_id=payment_id,
            amount=1250,
            currency="usd",
            payment_method="pm_card_visa",
            idempotency_key=f"payray:{payment_id}",
            metadata={"merchant_id": "m_tls"},
        )
    finally:
        await psp.aclose()


# -- the PSP over HTTPS ----------------------------------------------------------------------------------


def test_the_emulator_serves_https_that_only_the_bundle_makes_trusted(psp_url: str, pki: Pki) -> None:
    assert psp_url.startswith(f"https://{LOOPBACK}:")
    assert httpx.get(f"{psp_url}/_emulator/health", verify=trusting(pki)).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{psp_url}/_emulator/health", verify=outbound_ssl_context())


def test_stripe_psp_trusting_the_bundle_charges_and_finds_the_charge(psp_url: str, pki: Pki) -> None:
    payment_id = uuid.uuid4().hex
    result = run(capture(StripePsp(KEY, psp_url, ca_bundle=str(pki.bundle)), payment_id))
    assert result.status == "captured" and result.psp_reference and result.charge_id

    async def look() -> PspChargeResult | None:
        psp = StripePsp(KEY, psp_url, ca_bundle=str(pki.bundle))
        try:
            return await psp.lookup(payment_id=payment_id)
        finally:
            await psp.aclose()

    assert run(look()) == result
    assert stats(psp_url, pki, payment_id)["captures_by_payray_payment_id"] == {payment_id: 1}


def test_stripe_psp_without_the_bundle_sends_nothing_and_answers_as_for_a_refused_connection(
    psp_url: str, pki: Pki
) -> None:
    payment_id = uuid.uuid4().hex
    before = stats(psp_url, pki, payment_id)
    unverified = run(capture(StripePsp(KEY, psp_url, max_network_retries=0), payment_id))
    refused_base = f"https://{LOOPBACK}:{closed_port()}"
    refused = run(capture(StripePsp(KEY, refused_base, max_network_retries=0), uuid.uuid4().hex))
    assert unverified.status == refused.status == "unknown"
    assert unverified.psp_reference is None and refused.psp_reference is None
    assert unverified.detail and "APIConnectionError (ClientConnectorCertificateError)" in unverified.detail
    assert refused.detail and "APIConnectionError (ClientConnectorError)" in refused.detail
    after = stats(psp_url, pki, payment_id)
    assert after["captures_by_payray_payment_id"] == {payment_id: 0}
    for count in ("payment_intents", "charges", "captures", "idempotency_keys"):
        assert after[count] == before[count], f"the emulator saw a request: {count} changed"
    # ``unknown`` was the safe answer: once the CA is trusted, the same key charges, once
    again = run(capture(StripePsp(KEY, psp_url, ca_bundle=str(pki.bundle)), payment_id))
    assert again.status == "captured"
    assert stats(psp_url, pki, payment_id)["captures_by_payray_payment_id"] == {payment_id: 1}


def test_the_settlement_report_downloads_over_https_with_the_bundle(psp_url: str, pki: Pki) -> None:
    async def download() -> bytes:
        psp = StripePsp(KEY, psp_url, ca_bundle=str(pki.bundle))
        try:
            report = psp.settlement_report(date(2030, 1, 15), REPORT_COLUMNS)
            return b"".join([chunk async for chunk in report.chunks()])
        finally:
            await psp.aclose()

    csv = run(download()).decode()
    assert csv.splitlines()[0].split(",") == list(REPORT_COLUMNS)


# -- webhooks to merchants ----------------------------------------------------------------------------


@dataclass
class HttpsReceiver:
    """A merchant's endpoint on loopback over HTTPS: each POST's body and signature, in order."""

    url: str = ""
    received: list[tuple[bytes, str]] = field(default_factory=list)


@asynccontextmanager
async def https_receiver(ca: trustme.CA) -> AsyncIterator[HttpsReceiver]:
    """An endpoint whose certificate (for 127.0.0.1) ``ca`` signed, in this event loop."""
    receiver = HttpsReceiver()

    async def hook(request: web.Request) -> web.Response:
        receiver.received.append((await request.read(), request.headers.get("Stripe-Signature", "")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK).configure_cert(context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0, ssl_context=context).start()
    receiver.url = f"https://{LOOPBACK}:{runner.addresses[0][1]}/hooks"
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
def webhook_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own: the dispatcher claims every due delivery it holds."""
    with fresh_database(postgres_server_url) as url:
        yield url


async def endpoint_for(conn: psycopg.AsyncConnection[Any], merchant_id: str, url: str) -> str:
    endpoint_id = f"we_{uuid.uuid4().hex[:24]}"
    created_at = datetime.now(UTC) - timedelta(seconds=1)  # before the event, so the event fans out to it
    await store.insert_endpoint(
        conn, WebhookEndpoint(endpoint_id, merchant_id, url, ["*"], SECRET, created_at)
    )
    return endpoint_id


async def announce_charge(conn: psycopg.AsyncConnection[Any], merchant_id: str) -> None:
    """A ``charge.succeeded`` event of the merchant's, handed to its endpoints as the notifier does."""
    charge_id = f"ch_{uuid.uuid4().hex[:24]}"
    payload = {"id": charge_id, "object": "charge", "amount": 700, "currency": "usd", "paid": True}
    cur = await conn.execute(
        "INSERT INTO outbox (topic, aggregate_id, payload, merchant_id) VALUES (%s, %s, %s, %s) RETURNING id",
        ("charge.succeeded", charge_id, Jsonb(payload), merchant_id),
    )
    row = await cur.fetchone()
    assert row is not None
    assert await store.fan_out(conn, [row[0]]) == 2


async def delivery_of(conn: psycopg.AsyncConnection[Any], endpoint_id: str) -> tuple[str, list[Any]]:
    """The endpoint's one delivery's status, and its attempts as (attempt, HTTP status, error)."""
    cur = await conn.execute("SELECT status FROM webhook_deliveries WHERE endpoint_id = %s", (endpoint_id,))
    [(status,)] = await cur.fetchall()
    cur = await conn.execute(
        "SELECT attempt, http_status, error FROM webhook_attempts WHERE endpoint_id = %s ORDER BY id",
        (endpoint_id,),
    )
    return status, [tuple(row) for row in await cur.fetchall()]


def test_the_webhook_worker_delivers_to_the_bundles_ca_and_retries_another_cas_endpoint(
    webhook_database_url: str, pki: Pki
) -> None:
    policy = DeliveryPolicy(
        timeout_s=5.0, retry_base_s=0.2, retry_cap_s=0.2, window_s=120.0, poll_s=0.05,
        loopback_only=True, ca_bundle=str(pki.bundle),
    )  # fmt: skip

    async def scenario() -> tuple[HttpsReceiver, HttpsReceiver, Any, Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            webhook_database_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True, timeout=30)
        dispatcher = WebhookDispatcher(pool, policy)
        try:
            async with https_receiver(pki.ca) as trusted, https_receiver(trustme.CA()) as stranger:
                merchant_id = f"m_{uuid.uuid4().hex[:12]}"
                async with pool.connection() as conn:
                    trusted_id = await endpoint_for(conn, merchant_id, trusted.url)
                    stranger_id = await endpoint_for(conn, merchant_id, stranger.url)
                    await announce_charge(conn, merchant_id)
                deadline = time.monotonic() + 30
                while True:
                    await dispatcher.run_pass()
                    async with pool.connection() as conn:
                        delivered = await delivery_of(conn, trusted_id)
                        refused = await delivery_of(conn, stranger_id)
                    if delivered[0] != "pending" and (refused[0] != "pending" or len(refused[1]) >= 3):
                        return trusted, stranger, delivered, refused
                    assert time.monotonic() < deadline, f"deliveries stuck: {delivered}, {refused}"
        finally:
            await dispatcher.aclose()
            await pool.close()

    trusted, stranger, delivered, refused = run(scenario())
    assert delivered == ("succeeded", [(1, 200, None)])
    [(body, signature)] = trusted.received
    assert stripe.Webhook.construct_event(body.decode(), signature, SECRET)["type"] == "charge.succeeded"
    status, attempts = refused
    assert status == "pending", "a certificate that does not verify is retried, never delivered nor dropped"
    assert [n for n, _, _ in attempts] == list(range(1, len(attempts) + 1))
    for _, http_status, error in attempts:
        assert http_status is None and error and "CERTIFICATE_VERIFY_FAILED" in error
    assert stranger.received == []


# -- the emulator's own webhooks ---------------------------------------------------------------------------


async def emulator_webhooks_to(receiver: HttpsReceiver, ca_bundle: Path | None) -> dict[str, Any]:
    """A charge at an in-process emulator (``ca_bundle`` as given) whose webhooks go to ``receiver``; what
    its sender counted once every delivery (and retry) is over."""
    config = {"url": receiver.url, "secret": SECRET, "enabled_events": ["charge.succeeded"],
              "max_attempts": 2, "backoff_ms": 10}  # fmt: skip
    async with EmulatorServer(ca_bundle=ca_bundle) as emulator:
        assert emulator.url is not None
        async with httpx.AsyncClient(base_url=emulator.url) as api:
            assert (await api.post("/_emulator/webhooks", json=config)).status_code == 200
            assert (await capture(StripePsp(KEY, emulator.url), uuid.uuid4().hex)).status == "captured"
            flushed = await api.post("/_emulator/webhooks/flush", params={"timeout_s": 30}, timeout=40)
            assert flushed.json()["idle"] is True
            sender: dict[str, Any] = (await api.get("/_emulator/webhooks")).json()
    return sender


def test_the_emulators_webhooks_reach_an_https_endpoint_only_with_its_ca_bundle(pki: Pki) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], HttpsReceiver, HttpsReceiver]:
        async with https_receiver(pki.ca) as with_bundle, https_receiver(pki.ca) as without:
            trusting_ca = await emulator_webhooks_to(with_bundle, pki.bundle)
            defaults_only = await emulator_webhooks_to(without, None)
            return trusting_ca, defaults_only, with_bundle, without

    trusting_ca, defaults_only, with_bundle, without = run(scenario())
    assert trusting_ca["counts"] == {"delivered": 1} and len(with_bundle.received) == 1
    assert defaults_only["counts"] == {"failed": 2, "given_up": 1} and without.received == []
    assert [a["status"] for a in defaults_only["attempts"]] == [None, None]
