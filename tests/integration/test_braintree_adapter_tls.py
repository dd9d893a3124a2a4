"""BraintreePsp verifies the PSP's certificate: the emulator serving HTTPS with a local CA's certificate is
trusted only by an adapter given that CA in ``ca_bundle``; without it nothing is sent and the charge is
``unknown``, as for a refused connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from psp.braintree.adapter import BraintreePsp
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.emulator.server import EmulatorProcess
from psp.port import PspChargeResult

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def bundle_and_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    where = tmp_path_factory.mktemp("braintree-pki")
    ca = trustme.CA()
    server = ca.issue_cert(LOOPBACK, "localhost")
    bundle, cert, key = where / "ca.pem", where / "server.pem", where / "server.key"
    ca.cert_pem.write_to_path(bundle)
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    with EmulatorProcess(None, tls_cert=cert, tls_key=key) as emulator:
        assert emulator.url is not None and emulator.url.startswith("https://")
        yield bundle, emulator.url


async def charge_and_ping(psp: BraintreePsp) -> tuple[PspChargeResult, bool]:
    try:
        payment_id = f"pay-{uuid.uuid4().hex[:12]}"
        result = await psp.capture(
            payment_id=payment_id,
            amount=700,
            currency="usd",
            payment_method="fake-valid-nonce",
            idempotency_key=f"att-{payment_id}",
            metadata={},
        )
        return result, await psp.ping()
    finally:
        await psp.aclose()


def adapter(url: str, ca_bundle: str | None) -> BraintreePsp:
    return BraintreePsp(
        DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY, url, timeout_s=5.0, ca_bundle=ca_bundle
    )


def test_the_bundles_ca_makes_the_emulator_trusted(bundle_and_url: tuple[Path, str]) -> None:
    bundle, url = bundle_and_url
    result, pinged = asyncio.run(charge_and_ping(adapter(url, str(bundle))))
    assert result.status == "captured" and result.amount == 700
    assert pinged is True


def test_without_the_bundle_nothing_is_sent_and_the_outcome_is_unknown(
    bundle_and_url: tuple[Path, str],
) -> None:
    bundle, url = bundle_and_url

    def sales() -> int:
        stats = httpx.get(f"{url}/_emulator/braintree/stats", verify=str(bundle)).json()
        count: int = stats["transaction"]
        return count

    before = sales()
    result, pinged = asyncio.run(charge_and_ping(adapter(url, None)))
    assert result.status == "unknown" and result.detail is not None
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert pinged is False
    assert sales() == before
