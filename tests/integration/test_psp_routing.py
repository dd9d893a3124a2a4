"""A merchant's PSP routing through the admin API and the CLI: Stripe alone until set, a list of known PSPs
each once, and bad input refused with nothing stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import psycopg
import pytest

from ops.stack import StackInfo
from tests.integration.stack_fixtures import Merchant

pytestmark = pytest.mark.integration


def _path(merchant_id: str) -> str:
    return f"/v1/admin/merchants/{merchant_id}/routing"


def _rows(database_url: str, merchant_id: str) -> list[Any]:
    with psycopg.connect(database_url) as conn:
        query = "SELECT psps FROM merchant_psp_routing WHERE merchant_id = %s"
        return conn.execute(query, (merchant_id,)).fetchall()


def test_a_merchant_routes_to_stripe_alone_until_its_routing_is_set(
    admin: httpx.Client, merchant: Merchant, api_database_url: str
) -> None:
    default = admin.get(_path(merchant.id))
    assert default.status_code == 200, default.text
    assert default.json() == {
        "object": "psp_routing",
        "merchant": merchant.id,
        "psps": ["stripe"],
        "updated": None,
    }

    set_ = admin.post(_path(merchant.id), json={"psps": ["braintree", "stripe"]})
    assert set_.status_code == 200, set_.text
    assert set_.json()["psps"] == ["braintree", "stripe"] and set_.json()["updated"] > 0
    assert admin.get(_path(merchant.id)).json()["psps"] == ["braintree", "stripe"]
    form = admin.post(_path(merchant.id), data={"psps[0]": "stripe"})  # as Stripe's SDKs send a list
    assert form.status_code == 200 and form.json()["psps"] == ["stripe"], form.text
    assert _rows(api_database_url, merchant.id) == [(["stripe"],)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"psps": ["stripe", "adyen"]}, "psps"),
        ({"psps": ["stripe", "stripe"]}, "psps"),
        ({"psps": []}, "psps"),
        ({"psps": "stripe"}, "psps"),
        ({"psps": ["stripe"], "weights": [1]}, "weights"),
        ({}, "psps"),
    ],
)
def test_a_bad_routing_is_a_400_naming_the_field_and_stores_nothing(
    admin: httpx.Client, merchant: Merchant, api_database_url: str, body: dict[str, Any], param: str
) -> None:
    refused = admin.post(_path(merchant.id), json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param
    assert _rows(api_database_url, merchant.id) == []
    assert admin.get(_path(merchant.id)).json()["psps"] == ["stripe"]


def test_an_unknown_merchant_is_a_404_and_a_merchant_key_is_refused(
    admin: httpx.Client, merchant: Merchant, stack: StackInfo, api_database_url: str
) -> None:
    missing = admin.post(_path("acct_does_not_exist"), json={"psps": ["braintree"]})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "merchant"
    assert _rows(api_database_url, "acct_does_not_exist") == []
    as_merchant = merchant.client.post(_path(merchant.id), json={"psps": ["braintree"]})
    assert as_merchant.status_code == 401
    assert _rows(api_database_url, merchant.id) == []


def test_the_cli_shows_and_sets_a_routing(
    stack: StackInfo, merchant: Merchant, api_database_url: str
) -> None:
    env = {**os.environ, "PAYRAY_HOME": "/nonexistent-payray-home"}
    target = ["--url", stack.base_url, "--admin-key", stack.admin_key]

    def payray(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ops.cli", "merchant", "routing", merchant.id, *args, *target]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    shown = payray()
    assert shown.returncode == 0 and json.loads(shown.stdout)["psps"] == ["stripe"], shown.stderr
    refused = payray("--psps", "stripe,adyen")
    assert refused.returncode == 2 and "unknown PSP 'adyen'" in refused.stderr
    assert _rows(api_database_url, merchant.id) == []
    set_ = payray("--psps", "braintree, stripe")
    assert set_.returncode == 0 and json.loads(set_.stdout)["psps"] == ["braintree", "stripe"], set_.stderr
