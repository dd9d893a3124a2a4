"""Both adapters tell a request that never left (its connection refused) from one that may have reached the
PSP (the connection dropped after it was sent): only the first is a definite failure that may fail over."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from ops.loopback import free_port
from psp.braintree.adapter import BraintreePsp
from psp.emulator.braintree.credentials import DEFAULT_MERCHANT_ID, DEFAULT_PRIVATE_KEY, DEFAULT_PUBLIC_KEY
from psp.port import PaymentServiceProvider, PspChargeResult
from psp.stripe_adapter import StripePsp

pytestmark = pytest.mark.integration


@pytest.fixture
def dropping_port() -> Iterator[int]:
    """A port that accepts each connection, reads what was sent, and closes it without an answer."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def adapters(base: str) -> list[PaymentServiceProvider]:
    stripe = StripePsp("sk_test_x", base, timeout_s=2.0, max_network_retries=1)
    braintree = BraintreePsp(
        DEFAULT_MERCHANT_ID, DEFAULT_PUBLIC_KEY, DEFAULT_PRIVATE_KEY, base, timeout_s=2.0
    )
    return [stripe, braintree]


def charge_at(psp: PaymentServiceProvider) -> PspChargeResult:
    async def charge() -> PspChargeResult:
        try:
            return await psp.capture(
                payment_id="ch_not_sent",
                amount=1000,
                currency="usd",
                payment_method="pm_card_visa",
                idempotency_key="payray-capture-ch_not_sent",
                metadata={},
            )
        finally:
            await psp.aclose()

    return asyncio.run(charge())


@pytest.mark.parametrize("which", [0, 1], ids=["stripe", "braintree"])
def test_a_refused_connection_is_a_request_never_sent(which: int) -> None:
    result = charge_at(adapters(f"http://127.0.0.1:{free_port()}")[which])  # nothing listens there
    assert (result.status, result.refusal) == ("unknown", "not_sent")


@pytest.mark.parametrize("which", [0, 1], ids=["stripe", "braintree"])
def test_a_connection_dropped_after_sending_is_unknown_and_never_fails_over(
    which: int, dropping_port: int
) -> None:
    result = charge_at(adapters(f"http://127.0.0.1:{dropping_port}")[which])
    assert (result.status, result.refusal) == ("unknown", None)
