"""The emulator's webhook deliveries and disputes, received by a real HTTP endpoint and checked with the
Stripe SDK's own signature verification."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import stripe

from ops.loopback import free_port
from psp.emulator.server import EmulatorProcess

SECRET = "whsec_" + uuid.uuid4().hex
API_KEY = "sk_test_webhooks"


class Endpoint:
    """A webhook endpoint on loopback: answers each delivery with the next planned status (then 200)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str]] = []
        self.plan: list[int] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                signature = self.headers.get("Stripe-Signature", "")
                with endpoint.lock:
                    status = endpoint.plan.pop(0) if endpoint.plan else 200
                    if status == 200:
                        stripe.WebhookSignature.verify_header(body.decode(), signature, SECRET, 300)
                        endpoint.received.append((json.loads(body), signature))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the tests read what arrived, not the server's access log."""

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def types(self) -> list[str]:
        with self.lock:
            return [event["type"] for event, _ in self.received]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmulatorProcess(tmp_path_factory.mktemp("psp-webhooks")) as process:
        assert process.url is not None
        yield process.url


@pytest.fixture
def endpoint(emulator: str) -> Iterator[Endpoint]:
    hook = Endpoint()
    yield hook
    httpx.delete(f"{emulator}/_emulator/webhooks")
    hook.server.shutdown()


def configure(emulator: str, endpoint: Endpoint, **faults: Any) -> None:
    config = {"url": endpoint.url, "secret": SECRET, "backoff_ms": 20, **faults}
    answer = httpx.post(f"{emulator}/_emulator/webhooks", json=config)
    assert answer.status_code == 200, answer.text


def flush(emulator: str) -> None:
    answer = httpx.post(f"{emulator}/_emulator/webhooks/flush", params={"timeout_s": 30}, timeout=60)
    assert answer.status_code == 200 and answer.json()["idle"], answer.text


def capture(emulator: str, amount: int = 1000) -> dict[str, Any]:
    answer = httpx.post(
        f"{emulator}/v1/payment_intents",
        data={"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_events_are_signed_and_delivered(emulator: str, endpoint: Endpoint) -> None:
    configure(emulator, endpoint, enabled_events=["charge.succeeded", "payment_intent.succeeded"])
    intent = capture(emulator)
    flush(emulator)
    assert sorted(endpoint.types()) == ["charge.succeeded", "payment_intent.succeeded"]
    _, signature = endpoint.received[0]
    assert signature.startswith("t=") and ",v1=" in signature
    assert abs(int(signature.split(",")[0][2:]) - time.time()) < 60
    charge = next(e for e, _ in endpoint.received if e["type"] == "charge.succeeded")["data"]["object"]
    assert charge["payment_intent"] == intent["id"]


def test_a_failed_delivery_is_retried_and_resigned(emulator: str, endpoint: Endpoint) -> None:
    configure(emulator, endpoint, enabled_events=["charge.succeeded"])
    endpoint.plan = [500, 503]
    capture(emulator)
    flush(emulator)
    assert endpoint.types() == ["charge.succeeded"]
    attempts = httpx.get(f"{emulator}/_emulator/webhooks").json()["attempts"]
    assert [a["status"] for a in attempts[-3:]] == [500, 503, 200]


def test_duplicates_drops_and_reordering(emulator: str, endpoint: Endpoint) -> None:
    configure(
        emulator, endpoint, enabled_events=["charge.succeeded"], duplicate_rate=1.0, drop_rate=1.0,
        reorder_window=3, seed=3,
    )  # fmt: skip
    intents = [capture(emulator, 1000 + i) for i in range(3)]
    flush(emulator)
    got = [e["data"]["object"]["payment_intent"] for e, _ in endpoint.received]
    # every event twice (each first attempt dropped and retried), in a shuffled order
    assert sorted(got) == sorted([i["id"] for i in intents] * 2)
    status = httpx.get(f"{emulator}/_emulator/webhooks").json()
    assert status["counts"]["dropped"] == 6 and status["counts"]["delivered"] == 6


def test_a_dispute_is_opened_and_closed_with_its_events(emulator: str, endpoint: Endpoint) -> None:
    configure(emulator, endpoint, enabled_events=["charge.dispute.created", "charge.dispute.closed"])
    intent = capture(emulator, 5000)
    opened = httpx.post(
        f"{emulator}/_emulator/disputes", json={"payment_intent": intent["id"], "amount": 1500}
    )
    assert opened.status_code == 200, opened.text
    dispute = opened.json()
    assert (
        dispute["object"] == "dispute" and dispute["status"] == "needs_response" and dispute["amount"] == 1500
    )
    closed = httpx.post(f"{emulator}/_emulator/disputes/{dispute['id']}/close", json={"status": "lost"})
    assert closed.status_code == 200 and closed.json()["status"] == "lost"
    again = httpx.post(f"{emulator}/_emulator/disputes/{dispute['id']}/close", json={"status": "won"})
    assert again.status_code == 400
    flush(emulator)
    assert endpoint.types() == ["charge.dispute.created", "charge.dispute.closed"]
    fetched = httpx.get(
        f"{emulator}/v1/disputes/{dispute['id']}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert fetched.json()["status"] == "lost"
    too_big = httpx.post(
        f"{emulator}/_emulator/disputes", json={"payment_intent": intent["id"], "amount": 5001}
    )
    assert too_big.status_code == 400


def test_bad_webhook_configurations_are_refused(emulator: str) -> None:
    for bad in ({"url": "ftp://x", "secret": SECRET}, {"url": "http://127.0.0.1:1/", "secret": "nope"},
                {"url": "http://127.0.0.1:1/", "secret": SECRET, "duplicate_rate": 2}):  # fmt: skip
        assert httpx.post(f"{emulator}/_emulator/webhooks", json=bad).status_code == 400
