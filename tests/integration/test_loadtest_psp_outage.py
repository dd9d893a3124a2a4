"""``payray loadtest --psp-faults stripe_outage``: Stripe down for the middle of a Locust run while the run's
merchants route Stripe then Braintree. New charges must reach Braintree while Stripe is down, and nothing may
be captured twice across the two PSPs, before recovery or after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from ops.stack import StackInfo
from tests.integration.polling import until
from tests.integration.stack_fixtures import Merchant

pytestmark = pytest.mark.integration


def _loadtest(stack: StackInfo, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert stack.psp_api_base
    target = ["--url", stack.base_url, "--admin-key", stack.admin_key, "--psp-url", stack.psp_api_base]
    # A busy test machine may be slow; a request counts as failed only if it truly fails.
    env = {**os.environ, "PAYRAY_LOAD_CLIENT_TIMEOUT": "60", "PAYRAY_LOAD_CHARGE_REPORT": str(report)}
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "loadtest", *target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _braintree_payments_created(database_url: str, merchant_ids: list[str]) -> list[float]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM created_at)::float8 FROM payments"
            " WHERE merchant_id = ANY(%s) AND psp = 'braintree'",
            (merchant_ids,),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_stripe_outage_mid_run_sends_charges_to_braintree_and_captures_nothing_twice(
    stack: StackInfo, admin: httpx.Client, api_database_url: str, tmp_path: Path
) -> None:
    report_file = tmp_path / "charges.json"
    done = _loadtest(
        stack, report_file, "--users", "6", "--spawn-rate", "6", "--run-time", "15s", "--merchants", "2",
        "--psp-faults", "stripe_outage", "--refund-share", "0.2",
    )  # fmt: skip
    logs = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, logs
    assert "invariants hold" in done.stdout and '"no_double_capture": {\n    "ok": true' in done.stdout
    assert "charges during:" in done.stderr, logs  # the run reports its charges by PSP, phase by phase

    report = json.loads(report_file.read_text())
    assert report["profile"] == "stripe_outage" and report["outage"]["psp"] == "stripe"
    start, end = report["outage"]["start"], report["outage"]["end"]
    merchants = report["merchants"]
    for merchant_id in merchants:
        routing = admin.get(f"/v1/admin/merchants/{merchant_id}/routing")
        assert routing.status_code == 200 and routing.json()["psps"] == ["stripe", "braintree"], routing.text
    # The clients saw charges made at Braintree among those sent while Stripe was down, and so does Postgres.
    assert report["charges"]["during"].get("braintree", 0) > 0, report["charges"]
    created = _braintree_payments_created(api_database_url, merchants)
    assert any(start <= at < end for at in created), (start, end, sorted(created)[:10])

    # Recovery settles at Stripe the charges its outage left unknown; the invariants still hold across both.
    for _ in range(3):
        assert admin.post("/v1/admin/recovery/sweep", json={"grace_s": 0}).status_code == 200
    invariants = admin.get("/v1/admin/invariants").json()
    assert invariants["ok"], invariants
    assert invariants["no_double_capture"]["violations"] == 0


def test_stripe_takes_new_payments_again_once_its_outage_is_over(
    admin: httpx.Client, new_merchant: Callable[[], Merchant], api_database_url: str
) -> None:
    """The breaker the outage opened closes on a successful probe: the stack is left as it was found."""
    merchant = new_merchant()
    answer = admin.post(f"/v1/admin/merchants/{merchant.id}/routing", json={"psps": ["stripe", "braintree"]})
    assert answer.status_code == 200, answer.text

    def charged_at_stripe() -> bool:
        charged = merchant.charge()
        assert charged.status_code == 200, charged.text
        with psycopg.connect(api_database_url) as conn:
            row = conn.execute("SELECT psp FROM payments WHERE id = %s", (charged.json()["id"],)).fetchone()
        return row is not None and row[0] == "stripe"

    until(charged_at_stripe, timeout_s=60, what="a payment at Stripe after the outage")
