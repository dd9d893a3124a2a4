"""Reconciliation through the running stack: the API, the scheduler actor, the metric and ``payray recon``.

The stack is shared with other tests, so today's run sees their charges too: these tests check their own
charges and the drift they inject (recall), while precision is scored where the ledger is the test's alone
(``test_reconcile_psp.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import ray

from ledger import store
from ledger.postings import refund_posting, refund_reversal_posting
from ops.stack import StackInfo
from payray.money import Money
from serve_app.workers.reconciliation import SCHEDULER_NAME
from tests.integration.polling import until
from tests.integration.stack_fixtures import STACK_NAMESPACE, Merchant


@pytest.fixture
def today() -> str:
    """Today (UTC), not within a minute of midnight: the charges and their report rows must share a day."""

    def clear_of_midnight() -> bool:
        now = datetime.now(UTC)
        return 60 <= now.hour * 3600 + now.minute * 60 + now.second < 86_340

    until(clear_of_midnight, 130, "a minute clear of midnight")
    return datetime.now(UTC).date().isoformat()


@pytest.fixture
def no_drift(psp_control: httpx.Client) -> Iterator[None]:
    yield
    assert psp_control.delete("/_emulator/settlement/drift").status_code == 200


def run_day(admin: httpx.Client, day: str) -> dict[str, Any]:
    answer = admin.post("/v1/reconciliation/runs", json={"date": day})
    assert answer.status_code == 200, answer.text
    run: dict[str, Any] = answer.json()
    assert run["status"] == "succeeded", run
    return run


def run_discrepancies(admin: httpx.Client, run_id: str, **query: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params = {"run": run_id, "limit": "100", **query}
    while True:
        page = admin.get("/v1/reconciliation/discrepancies", params=params)
        assert page.status_code == 200, page.text
        found += page.json()["data"]
        if not page.json()["has_more"]:
            return found
        params["starting_after"] = found[-1]["id"]


def test_a_day_reconciles_through_the_api_and_reruns_are_idempotent(
    admin: httpx.Client, merchant: Merchant, psp_control: httpx.Client, today: str
) -> None:
    charges = [merchant.charge(amount=1_000 + i).json() for i in range(3)]
    assert merchant.refund(charges[0]["id"], amount=300).status_code == 200
    psp_control.post("/_emulator/webhooks/flush")
    first = run_day(admin, today)
    assert first["id"].startswith("recon_") and first["date"] == today
    assert first["psp_rows"] >= 4 and first["matched"] >= 4
    ours = {c["psp_reference"] for c in charges}
    assert not ours & {d["reference"] for d in run_discrepancies(admin, first["id"])}

    second = run_day(admin, today)
    assert second["id"] == first["id"] and second["attempts"] == first["attempts"] + 1
    for field in ("psp_rows", "ledger_rows", "matched", "discrepancies"):
        assert second[field] == first[field], field
    assert admin.get(f"/v1/reconciliation/runs/{first['id']}").json()["attempts"] == second["attempts"]
    listed = admin.get("/v1/reconciliation/runs", params={"limit": 100}).json()
    assert first["id"] in {run["id"] for run in listed["data"]}


def test_each_psps_payments_are_reconciled_against_its_own_report(
    admin: httpx.Client, new_merchant: Callable[[], Merchant], today: str
) -> None:
    at_stripe, at_braintree = new_merchant(), new_merchant()
    routed = admin.post(f"/v1/admin/merchants/{at_braintree.id}/routing", json={"psps": ["braintree"]})
    assert routed.status_code == 200, routed.text
    stripe_charges = [at_stripe.charge(amount=1_100 + i).json() for i in range(2)]
    sales = [at_braintree.charge(amount=1_300 + i).json() for i in range(2)]
    voided = at_braintree.charge(amount=1_250).json()
    refund = at_braintree.refund(voided["id"])  # before its batch closes: Braintree voids the sale
    assert refund.status_code == 200 and refund.json()["status"] == "succeeded", refund.text

    run = run_day(admin, today)
    assert list(run["by_psp"])[:2] == ["stripe", "braintree"]
    assert run["psp_reports"]["stripe"] == run["psp_report"] == run["by_psp"]["stripe"]["psp_report"]
    assert run["psp_reports"]["braintree"] == f"settlement_batch_summary:{today}"
    for field in ("psp_rows", "ledger_rows", "matched", "resolved_late"):
        assert run[field] == sum(part[field] for part in run["by_psp"].values()), field
    for kind, n in run["discrepancies"].items():
        assert n == sum(part["discrepancies"][kind] for part in run["by_psp"].values()), kind
    assert run["by_psp"]["braintree"]["voided"] >= 2
    assert admin.get(f"/v1/reconciliation/runs/{run['id']}").json()["by_psp"] == run["by_psp"]

    found = {d["reference"]: d for d in run_discrepancies(admin, run["id"])}
    # today's sales settle in tonight's batch, so today's report lacks them: missing at Braintree, never
    # matched against (or filed under) Stripe; the voided sale and its void settle nowhere: no difference
    for sale in sales:
        filed = found[sale["psp_reference"]]
        assert filed["psp_name"] == "braintree" and filed["kind"] == "missing_at_psp", filed
        assert filed["psp"] is None and filed["ledger"]["amount"] == sale["amount"]
    assert voided["psp_reference"] not in found
    assert not {c["psp_reference"] for c in stripe_charges} & set(found)
    assert {d["psp_name"] for d in found.values()} <= {"stripe", "braintree"}


def test_injected_drift_is_found_and_can_be_resolved_with_a_note(
    admin: httpx.Client, merchant: Merchant, psp_control: httpx.Client, today: str, no_drift: None
) -> None:
    for i in range(6):
        assert merchant.charge(amount=2_000 + i).status_code == 200
    counts = {"missing_capture": 1, "unknown_row": 1, "amount_mismatch": 1, "currency_mismatch": 1}
    injected = psp_control.post("/_emulator/settlement/drift", json={"date": today, "seed": 3, **counts})
    assert injected.status_code == 200, injected.text
    expected_kind = {
        "missing_capture": "missing_at_psp",
        "unknown_row": "missing_in_ledger",
        "amount_mismatch": "amount_mismatch",
        "currency_mismatch": "currency_mismatch",
    }
    run = run_day(admin, today)
    found = {(d["kind"], d["reference"]): d for d in run_discrepancies(admin, run["id"], status="open")}
    for injection in injected.json()["injections"]:
        assert (expected_kind[injection["kind"]], injection["reference"]) in found, injection

    unknown = next(i for i in injected.json()["injections"] if i["kind"] == "unknown_row")
    discrepancy = found[("missing_in_ledger", unknown["reference"])]
    assert discrepancy["psp"]["balance_transaction"] == unknown["balance_transaction"]
    assert discrepancy["ledger"] is None and discrepancy["status"] == "open"
    url = f"/v1/reconciliation/discrepancies/{discrepancy['id']}/resolve"
    for bad in (
        {},
        {"resolution": "ok"},
        {"resolution": "Bad Resolution!", "note": "x"},
        {"resolution": "written_off", "note": ""},
        {"resolution": "written_off", "note": "x", "x": 1},
    ):
        assert admin.post(url, json=bad).status_code == 400, bad
    assert admin.get(f"/v1/reconciliation/discrepancies/{discrepancy['id']}").json()["status"] == "open"
    resolved = admin.post(
        url, json={"resolution": "written_off", "note": "PSP test row, confirmed by support"}
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved" and resolved.json()["note"].startswith("PSP test row")
    again = admin.post(url, json={"resolution": "other", "note": "twice"})
    assert again.status_code == 400 and again.json()["error"]["code"] == "discrepancy_already_resolved"
    assert (
        admin.get(f"/v1/reconciliation/discrepancies/{discrepancy['id']}").json()["resolution"]
        == "written_off"
    )

    # A re-run does not reopen what a person resolved.
    rerun = run_day(admin, today)
    assert rerun["id"] == run["id"]
    assert discrepancy["id"] in {d["id"] for d in run_discrepancies(admin, run["id"], status="resolved")}
    assert discrepancy["id"] not in {d["id"] for d in run_discrepancies(admin, run["id"], status="open")}


def test_bad_requests_are_refused_and_change_nothing(
    admin: httpx.Client, merchant: Merchant, api_database_url: str
) -> None:
    with psycopg.connect(api_database_url) as conn:
        before = conn.execute("SELECT count(*), coalesce(sum(attempts), 0) FROM recon_runs").fetchone()
    tomorrow = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    bodies: list[dict[str, Any]] = [
        {},
        {"date": "2026-13-01"},
        {"date": "2026-02-30"},
        {"date": "yesterday"},
        {"date": tomorrow},
        {"date": 20260101},
        {"date": "2026-01-01", "extra": 1},
    ]
    for body in bodies:
        answer = admin.post("/v1/reconciliation/runs", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert merchant.client.post("/v1/reconciliation/runs", json={"date": "2026-01-01"}).status_code == 401
    with psycopg.connect(api_database_url) as conn:
        after = conn.execute("SELECT count(*), coalesce(sum(attempts), 0) FROM recon_runs").fetchone()
    assert before == after

    assert admin.get("/v1/reconciliation/runs/recon_nope").status_code == 404
    assert admin.get("/v1/reconciliation/discrepancies/dp_nope").status_code == 404
    assert admin.post("/v1/reconciliation/discrepancies/dp_nope/resolve",
                      json={"resolution": "x_y", "note": "n"}).status_code == 404  # fmt: skip
    assert admin.get("/v1/reconciliation/discrepancies", params={"status": "closed"}).status_code == 400
    assert admin.get("/v1/reconciliation/discrepancies", params={"run": "recon_nope"}).status_code == 404
    assert admin.get("/v1/reconciliation/discrepancies", params={"limit": "0"}).status_code == 400


def test_the_metric_shows_the_open_queue(
    stack: StackInfo, admin: httpx.Client, api_database_url: str
) -> None:
    run_day(admin, datetime.now(UTC).date().isoformat())
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    with psycopg.connect(api_database_url) as conn:
        rows = conn.execute(
            "SELECT kind, count(*) FROM recon_discrepancies WHERE status = 'open' GROUP BY kind"
        ).fetchall()
    open_by_kind = dict(rows)
    for kind in ("missing_at_psp", "missing_in_ledger", "amount_mismatch", "currency_mismatch"):
        assert f'payray_recon_diffs{{kind="{kind}"}} {float(open_by_kind.get(kind, 0))}' in text
    assert "payray_recon_last_run_date_seconds" in text


def test_the_scheduler_caught_up_on_yesterday_and_waits_for_0215(
    stack: StackInfo, admin: httpx.Client
) -> None:
    scheduler = ray.get_actor(SCHEDULER_NAME, namespace=STACK_NAMESPACE)
    status = ray.get(scheduler.status.remote())
    assert status["at"] == "02:15"
    next_run = datetime.fromisoformat(status["next_run_at"])
    assert (next_run.hour, next_run.minute) == (2, 15) and next_run > datetime.now(UTC)
    if datetime.now(UTC).time() < datetime.strptime("02:15", "%H:%M").time():
        return  # tonight's run will reconcile yesterday; nothing to catch up on yet
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()

    def yesterdays_run() -> dict[str, Any] | None:
        runs = admin.get("/v1/reconciliation/runs", params={"limit": 100}).json()["data"]
        return next((run for run in runs if run["date"] == yesterday and run["status"] == "succeeded"), None)

    until(yesterdays_run, 120, "the scheduler's catch-up run of yesterday")


def test_payray_recon_prints_the_run_and_exits_by_its_outcome(stack: StackInfo, today: str) -> None:
    env = dict(os.environ)
    target = ["--url", stack.base_url, "--admin-key", stack.admin_key]
    done = subprocess.run([sys.executable, "-m", "ops.cli", "recon", "--date", today, *target],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    assert f"of {today}" in done.stdout and "matched" in done.stdout
    for bad in ("2026-02-30", "tomorrow", "2999-01-01"):
        refused = subprocess.run([sys.executable, "-m", "ops.cli", "recon", "--date", bad, *target],
                                 capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr


def test_a_difference_the_reconciliation_names_satisfies_invariant_4(
    admin: httpx.Client, api_database_url: str, today: str
) -> None:
    """A refund booked in the ledger that the PSP never made breaks invariant 4 until a run names it."""
    merchant_id, refund_id = f"acct_ghost{uuid.uuid4().hex[:8]}", f"re_ghost{uuid.uuid4().hex[:8]}"
    money = Money(500, "usd")
    with psycopg.connect(api_database_url, autocommit=True) as conn:
        [booked] = store.post_batch(conn, [refund_posting(refund_id, merchant_id, money, Money(0, "usd"))], 0)
        assert booked.ok
        try:
            before = admin.get("/v1/admin/invariants").json()["psp_matches_ledger"]
            assert not before["ok"] and refund_id in before["examples"]
            run = run_day(admin, today)
            named = {(d["kind"], d["reference"]) for d in run_discrepancies(admin, run["id"], status="open")}
            assert ("missing_at_psp", refund_id) in named
            after = admin.get("/v1/admin/invariants").json()["psp_matches_ledger"]
            assert after["ok"] and after["named_by_reconciliation"] >= 1, after
        finally:
            reversal = refund_reversal_posting(refund_id, merchant_id, money, Money(0, "usd"))
            assert store.post_batch(conn, [reversal], 0)[0].ok
