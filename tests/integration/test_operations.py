"""Operations endpoints and commands: health, metrics, OpenAPI, trial balance, merchants, verify, migrate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import psycopg
import pytest

from actors.wallet_host import host_name
from ops.stack import StackInfo
from payray.settings import Settings
from payray.slots import SlotMap
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant

pytestmark = pytest.mark.integration


def test_healthz_reports_every_dependency(stack: StackInfo) -> None:
    response = httpx.get(f"{stack.base_url}/healthz", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"postgres": True, "redis": True, "ray": True, "psp": True}


def test_openapi_lists_the_routes(stack: StackInfo) -> None:
    spec = httpx.get(f"{stack.base_url}/openapi.json", timeout=30).json()
    assert {"/v1/charges", "/v1/charges/{charge_id}", "/v1/balance", "/v1/merchants"} <= set(spec["paths"])


def test_metrics_count_charges(stack: StackInfo, merchant: Merchant) -> None:
    assert merchant.charge().status_code == 200
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    assert 'payray_http_requests_total{route="POST /v1/charges",status="200"}' in text
    assert 'payray_charge_transitions_total{event="psp_captured",to_state="captured"}' in text


def test_unknown_route_is_a_json_404(stack: StackInfo) -> None:
    response = httpx.get(f"{stack.base_url}/v1/nope", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "resource_missing"


def test_trial_balance_balances(admin: httpx.Client, merchant: Merchant) -> None:
    merchant.charge(amount=5000, currency="jpy")
    lines = admin.get("/v1/admin/ledger/trial_balance").json()["currencies"]
    assert lines["jpy"]["balanced"] and lines["jpy"]["debits"] == lines["jpy"]["credits"] >= 5000


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 5}, {"name": "x", "extra": 1}])
def test_bad_merchant_body_creates_nothing(
    admin: httpx.Client, api_database_url: str, body: dict[str, object]
) -> None:
    with psycopg.connect(api_database_url) as conn:
        before = conn.execute("SELECT count(*) FROM merchants").fetchone()
        assert admin.post("/v1/merchants", json=body).status_code == 400
        after = conn.execute("SELECT count(*) FROM merchants").fetchone()
    assert before == after


def _payray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_payray_verify_passes_against_the_stack(stack: StackInfo, merchant: Merchant) -> None:
    merchant.charge()
    done = _payray("verify", "--url", stack.base_url, "--admin-key", stack.admin_key, env=dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_payray_verify_fails_when_a_wallet_disagrees_with_the_ledger(
    stack: StackInfo, merchant: Merchant, api_database_url: str
) -> None:
    """A posting that bypasses the merchant's wallet breaks invariant 3, and verify exits 1."""
    import ray

    from ledger.postings import payout_posting
    from ledger.store import post_batch
    from payray.money import Money

    assert merchant.charge(amount=1000).status_code == 200
    behind_the_wallets_back = payout_posting("po_bypass_" + merchant.id, merchant.id, Money(100, "usd"))
    with psycopg.connect(api_database_url, autocommit=True) as conn:
        assert post_batch(conn, [behind_the_wallets_back], shard=0)[0].ok
    done = _payray("verify", "--url", stack.base_url, "--admin-key", stack.admin_key, env=dict(os.environ))
    assert done.returncode == 1, done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["wallets_match_ledger"]["violations"] == 1

    owner = host_name(SlotMap(Settings().wallet_hosts).host_of(merchant.id))
    host = ray.get_actor(owner, namespace=STACK_NAMESPACE)
    ray.get(host.resync.remote(merchant.id))  # the wallet rebuilds from the ledger, its source of truth
    healed = _payray("verify", "--url", stack.base_url, "--admin-key", stack.admin_key, env=dict(os.environ))
    assert healed.returncode == 0, healed.stdout


def test_migrate_and_merchant_create_commands(api_database_url: str) -> None:
    env = {**os.environ, "PAYRAY_DATABASE_URL": api_database_url}
    migrated = _payray("migrate", env=env)
    assert migrated.returncode == 0 and "applied 0 migration(s)" in migrated.stdout
    created = _payray("merchant", "create", "Corner Shop", env=env)
    assert created.returncode == 0, created.stderr
    merchant = json.loads(created.stdout)
    assert merchant["name"] == "Corner Shop" and merchant["api_key"].startswith("sk_test_")
    with psycopg.connect(api_database_url) as conn:
        row = conn.execute("SELECT name FROM merchants WHERE id = %s", (merchant["id"],)).fetchone()
    assert row == ("Corner Shop",)
