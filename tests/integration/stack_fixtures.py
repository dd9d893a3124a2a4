"""The running stack for integration tests: one Ray, one Serve app, one PSP emulator per session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.loopback import free_port
from ops.stack import HANDLED_EVENTS, Stack, StackInfo
from payray.settings import Settings
from tests.conftest import fresh_database

#: The stack's actors (writers bound to its database, wallets) live apart from the actor tests' own.
STACK_NAMESPACE = "payray-stack-test"
#: Webhooks signed with either secret pass (a rotation in progress); the emulator signs with the first.
WEBHOOK_SECRETS = ("whsec_current_" + uuid.uuid4().hex, "whsec_previous_" + uuid.uuid4().hex)
#: Webhooks to merchants on a test's clock: retries after 0.2 s, 0.4 s, then every 0.5 s, for 3 s; an attempt
#: gets 1 s; only loopback is ever posted to.
WEBHOOK_DELIVERY: dict[str, Any] = {
    "webhook_retry_base_s": 0.2,
    "webhook_retry_cap_s": 0.5,
    "webhook_retry_window_s": 3.0,
    "webhook_timeout_s": 1.0,
    "webhook_loopback_only": True,  # what the fuzzer registers never reaches out
}


@dataclass
class Merchant:
    id: str
    api_key: str
    client: httpx.Client

    def charge(self, key: str | None = None, **body: Any) -> httpx.Response:
        payload = {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", **body}
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return self.client.post("/v1/charges", json=payload, headers=headers)

    def refund(self, charge: str, key: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return self.client.post("/v1/refunds", json={"charge": charge, **body}, headers=headers)

    def available(self, currency: str = "usd") -> int:
        balance = self.client.get("/v1/balance").json()
        return next((b["amount"] for b in balance["available"] if b["currency"] == currency), 0)


def route(admin: httpx.Client, merchant: Merchant, *psps: str) -> None:
    """Set the merchant's PSPs, in the order its new payments try them."""
    answer = admin.post(f"/v1/admin/merchants/{merchant.id}/routing", json={"psps": list(psps)})
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="session")
def stack(
    ray_cluster: None, postgres_server_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackInfo]:
    """The stack on its own database, so the invariants see only what went through the API."""
    with fresh_database(postgres_server_url) as database_url:
        yield from _running_stack(database_url, redis_url, tmp_path_factory.mktemp("payray-home"))


def _running_stack(database_url: str, redis_url: str, home: Path) -> Iterator[StackInfo]:
    settings = Settings(
        home=home,
        database_url=database_url,
        redis_url=redis_url,
        admin_key="sk_admin_" + uuid.uuid4().hex,
        ray_namespace=STACK_NAMESPACE,
        psp_timeout_s=2.0,
        psp_max_retries=1,
        stripe_webhook_secrets=WEBHOOK_SECRETS,
        **WEBHOOK_DELIVERY,
    )
    running = Stack(settings, port=free_port(), num_cpus=2)
    info = running.start()
    try:
        yield info
    finally:
        running.stop()


@pytest.fixture(scope="session")
def admin(stack: StackInfo) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="session")
def psp_control(stack: StackInfo) -> Iterator[httpx.Client]:
    assert stack.psp_api_base
    with httpx.Client(base_url=stack.psp_api_base, timeout=30) as client:
        yield client


@pytest.fixture
def new_merchant(stack: StackInfo, admin: httpx.Client) -> Iterator[Callable[[], Merchant]]:
    clients: list[httpx.Client] = []

    def make() -> Merchant:
        created = admin.post("/v1/merchants", json={"name": f"shop-{uuid.uuid4().hex[:8]}"})
        assert created.status_code == 200, created.text
        body = created.json()
        client = httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {body['api_key']}"}, timeout=60
        )
        clients.append(client)
        return Merchant(body["id"], body["api_key"], client)

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def api_database_url(stack: StackInfo) -> str:
    """The database behind the running stack."""
    return stack.database_url


@pytest.fixture
def merchant(new_merchant: Callable[[], Merchant]) -> Merchant:
    return new_merchant()


@pytest.fixture
def faults(psp_control: httpx.Client) -> Iterator[Callable[..., None]]:
    """Set PSP faults for one test; they are cleared afterwards."""

    def set_faults(**config: Any) -> None:
        response = psp_control.post("/_emulator/faults", json=config)
        assert response.status_code == 200, response.text

    yield set_faults
    psp_control.post("/_emulator/faults", json={})


@pytest.fixture
def no_webhooks(stack: StackInfo, psp_control: httpx.Client) -> Iterator[None]:
    """The emulator keeps its events to itself for one test (so only the code under test settles things)."""
    assert psp_control.delete("/_emulator/webhooks").status_code == 200
    yield
    endpoint = {"url": f"{stack.base_url}/v1/webhooks/psp", "secret": WEBHOOK_SECRETS[0],
                "enabled_events": list(HANDLED_EVENTS)}  # fmt: skip
    assert psp_control.post("/_emulator/webhooks", json=endpoint).status_code == 200


@pytest.fixture
def invariants_hold(admin: httpx.Client) -> Iterator[None]:
    """After the test, the three invariants hold (the same check as ``payray verify``)."""
    yield
    response = admin.get("/v1/admin/invariants")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"], report
